"""fetch(): resume, retry, verification, lock file; extract(): safety and atomicity."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import socket
import stat
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from conftest import serve

from kboost.download import (
    CorruptArchiveError, DownloadError, check_archive, extract, extract_once, fetch, fetch_options,
    load_lock, lock_path, recorded_checksum, sidecar_path,
)

FAST = dict(retries=3, backoff=0.001, timeout=10, progress=False)


def _payload(n: int = 300_000) -> bytes:
    return os.urandom(n)


def _md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _serve(server, name: str, data: bytes) -> str:
    (server.root / name).write_bytes(data)
    return server.url(name)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --------------------------------------------------------------------------- fetch

@pytest.mark.parametrize("kind", ["md5", "sha256"])
def test_clean_download_verifies_and_records(http_server, tmp_path, kind):
    data = _payload()
    url = _serve(http_server, "a.bin", data)
    checksum = _md5(data) if kind == "md5" else _sha256(data)
    dest = fetch(url, tmp_path / "a.bin", checksum, **FAST)
    assert dest.read_bytes() == data
    assert not (tmp_path / "a.bin.part").exists()
    assert recorded_checksum(dest) == checksum
    assert json.loads(sidecar_path(dest).read_text())["url"] == url
    # second call: already there and verified, no request
    before = len(http_server.requests)
    fetch(url, dest, checksum, **FAST)
    assert len(http_server.requests) == before


def test_cut_transfer_resumes_with_range(http_server, tmp_path):
    data = _payload()
    url = _serve(http_server, "a.bin", data)
    http_server.cut_after = 100_000
    dest = fetch(url, tmp_path / "a.bin", _md5(data), **FAST)
    assert dest.read_bytes() == data
    ranges = http_server.range_requests
    assert len(ranges) == 1 and ranges[0].status == 206
    assert ranges[0].headers["Range"] == "bytes=100000-"  # resumed from what had arrived


def test_cut_transfer_restarts_when_server_ignores_range(http_server, tmp_path):
    data = _payload()
    url = _serve(http_server, "a.bin", data)
    http_server.cut_after = 150_000
    http_server.ignore_range = True
    dest = fetch(url, tmp_path / "a.bin", _sha256(data), **FAST)
    assert dest.read_bytes() == data
    assert http_server.range_requests and http_server.range_requests[0].status == 200


def test_existing_partial_file_is_resumed(http_server, tmp_path):
    data = _payload()
    url = _serve(http_server, "a.bin", data)
    (tmp_path / "a.bin.part").write_bytes(data[:12345])
    fetch(url, tmp_path / "a.bin", _md5(data), **FAST)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert [r.headers["Range"] for r in http_server.requests] == ["bytes=12345-"]


def test_complete_partial_file_416_is_verified(http_server, tmp_path):
    data = _payload(1000)
    url = _serve(http_server, "a.bin", data)
    (tmp_path / "a.bin.part").write_bytes(data)
    fetch(url, tmp_path / "a.bin", _md5(data), **FAST)
    assert [r.status for r in http_server.requests] == [416]
    assert (tmp_path / "a.bin").read_bytes() == data


def test_503_then_success(http_server, tmp_path):
    data = _payload(5000)
    url = _serve(http_server, "a.bin", data)
    http_server.fail_first = 2
    fetch(url, tmp_path / "a.bin", _md5(data), **FAST)
    assert [r.status for r in http_server.requests] == [503, 503, 200]


def test_persistent_503_gives_up(http_server, tmp_path):
    url = _serve(http_server, "a.bin", b"x" * 100)
    http_server.fail_first = 100
    with pytest.raises(DownloadError, match="giving up") as info:
        fetch(url, tmp_path / "a.bin", None, **FAST)
    assert url in str(info.value)
    assert len(http_server.requests) == FAST["retries"] + 1
    assert _leftovers(tmp_path) == []


def test_404_is_not_retried(http_server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        fetch(http_server.url("missing.bin"), tmp_path / "m.bin", None, **FAST)
    assert len(http_server.requests) == 1


def test_checksum_mismatch_leaves_nothing(http_server, tmp_path):
    data = _payload(5000)
    url = _serve(http_server, "a.bin", data)
    wrong = "md5:" + "0" * 32
    with pytest.raises(DownloadError) as info:
        fetch(url, tmp_path / "a.bin", wrong, **FAST)
    message = str(info.value)
    assert url in message and "0" * 32 in message and hashlib.md5(data).hexdigest() in message
    assert _leftovers(tmp_path) == []


def test_malformed_checksum_rejected_before_download(http_server, tmp_path):
    url = _serve(http_server, "a.bin", b"abc")
    with pytest.raises(DownloadError, match="md5:<hex>"):
        fetch(url, tmp_path / "a.bin", "crc32:1234", **FAST)
    assert http_server.requests == []


def test_no_checksum_warns_and_records_sha256(http_server, tmp_path, caplog):
    data = _payload(4000)
    url = _serve(http_server, "a.bin", data)
    with caplog.at_level(logging.WARNING, logger="kboost.download"):
        dest = fetch(url, tmp_path / "a.bin", None, **FAST)
    assert "no checksum pinned" in caplog.text
    assert recorded_checksum(dest) == _sha256(data)


def test_corrupted_existing_dest_is_replaced(http_server, tmp_path):
    data = _payload(4000)
    url = _serve(http_server, "a.bin", data)
    (tmp_path / "a.bin").write_bytes(b"stale")
    fetch(url, tmp_path / "a.bin", _md5(data), **FAST)
    assert (tmp_path / "a.bin").read_bytes() == data


def test_local_path_and_file_url(tmp_path):
    data = _payload(4000)
    source = tmp_path / "mirror" / "a.bin"
    source.parent.mkdir()
    source.write_bytes(data)
    one = fetch(str(source), tmp_path / "out1" / "a.bin", _md5(data), progress=False)
    two = fetch(source.as_uri(), tmp_path / "out2" / "a.bin", _md5(data), progress=False)
    assert one.read_bytes() == two.read_bytes() == data
    with pytest.raises(DownloadError, match="does not exist"):
        fetch(str(tmp_path / "nope.bin"), tmp_path / "out3" / "a.bin", None, progress=False)


# --------------------------------------------------------------------------- extract

def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def test_extract_tar_gz_and_zip(tmp_path):
    tgz = _tar(tmp_path / "a.tar.gz", [("top/x.txt", b"hello"), ("top/sub/y.txt", b"world")])
    out = extract(tgz, tmp_path / "out_tar")
    assert (out / "top" / "x.txt").read_bytes() == b"hello"
    assert (out / "top" / "sub" / "y.txt").read_bytes() == b"world"

    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("top/", b"")
        zf.writestr("top/x.txt", b"hello")
    out = extract(zpath, tmp_path / "out_zip")
    assert (out / "top" / "x.txt").read_bytes() == b"hello"
    # re-extracting replaces the target atomically
    extract(zpath, tmp_path / "out_zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "a.zip", "out_tar", "out_zip"]


@pytest.mark.parametrize("corruption", ["truncated", "garbage"])
@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_corrupt_archive(tmp_path, suffix, corruption):
    good = tmp_path / "src" / f"good{suffix}"
    good.parent.mkdir()
    payload = os.urandom(200_000)
    if suffix == ".zip":
        with zipfile.ZipFile(good, "w") as zf:
            zf.writestr("a/b.bin", payload)
    else:
        _tar(good, [("a/b.bin", payload)])
    data = good.read_bytes()
    bad = tmp_path / "work" / f"bad{suffix}"
    bad.parent.mkdir()
    bad.write_bytes(data[: len(data) // 2] if corruption == "truncated" else os.urandom(5000))
    with pytest.raises(DownloadError) as info:
        extract(bad, tmp_path / "work" / "out")
    assert str(bad) in str(info.value)
    assert _leftovers(tmp_path / "work") == [bad.name]


def test_corrupt_zip_crc(tmp_path):
    path = tmp_path / "crc.zip"
    payload = b"A" * 10_000
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.bin", payload)
    raw = bytearray(path.read_bytes())
    at = raw.find(payload)
    raw[at + 5000] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DownloadError, match="crc.zip"):
        extract(path, tmp_path / "out")
    assert _leftovers(tmp_path) == ["crc.zip"]


def _unsafe_tars(tmp_path: Path) -> dict:
    outside = tmp_path / "outside_evil.txt"
    return {
        "traversal": [("ok.txt", b"fine"), ("../evil.txt", b"bad")],
        "nested-traversal": [("a/../../evil.txt", b"bad")],
        "absolute": [("ok.txt", b"fine"), (str(outside), b"bad")],
        "symlink": [_link("link", "/etc"), ("link/evil.txt", b"bad")],
        "symlink-inside": [("ok.txt", b"fine"), _link("alias", "ok.txt")],
        "hardlink": [_link("hard", "/etc/passwd", tarfile.LNKTYPE)],
        "device": [_link("dev", "", tarfile.CHRTYPE)],
        "fifo": [_link("fifo", "", tarfile.FIFOTYPE)],
    }


@pytest.mark.parametrize("case", list(_unsafe_tars(Path("/x")).keys()))
def test_unsafe_tar_members_rejected(tmp_path, case):
    work = tmp_path / "work"
    work.mkdir()
    archive = _tar(work / "bad.tar.gz", _unsafe_tars(tmp_path)[case])
    with pytest.raises(DownloadError, match="unsafe member") as info:
        extract(archive, work / "deep" / "out")
    assert str(archive) in str(info.value)
    everything = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert everything == ["work", "work/bad.tar.gz", "work/deep"]


def test_unsafe_zip_members_rejected(tmp_path):
    cases = {
        "traversal": "../evil.txt",
        "absolute": str(tmp_path / "evil.txt"),
        "backslash": "..\\evil.txt",
    }
    for case, name in cases.items():
        archive = tmp_path / f"{case}.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("ok.txt", b"fine")
            zf.writestr(zipfile.ZipInfo(name), b"bad")
        with pytest.raises(DownloadError, match="unsafe member"):
            extract(archive, tmp_path / "out")
    symlink = tmp_path / "symlink.zip"
    with zipfile.ZipFile(symlink, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DownloadError, match="symbolic link"):
        extract(symlink, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{c}.zip" for c in cases] + ["symlink.zip"]
    )


def test_failed_extract_keeps_existing_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    archive = _tar(tmp_path / "bad.tar.gz", [("../evil.txt", b"bad")])
    with pytest.raises(DownloadError):
        extract(archive, target)
    assert (target / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz", "out"]


def test_oversized_partial_file_restarts(http_server, tmp_path):
    data = _payload(1000)
    url = _serve(http_server, "a.bin", data)
    (tmp_path / "a.bin.part").write_bytes(data + b"junk")
    fetch(url, tmp_path / "a.bin", _md5(data), **FAST)
    assert [r.status for r in http_server.requests] == [416, 200]
    assert (tmp_path / "a.bin").read_bytes() == data


# --------------------------------------------------------------------------- incomplete and changed files
# A scripted server for what the shared ``http_server`` fixture cannot do: answer without a
# Content-Length (body ends when the connection closes), cut a chosen GET short and cleanly
# close, cap 206 replies, and serve successive versions of a file (corrupt first, then good).

@dataclass
class Scripted:
    """``versions[name]``: bodies served by successive GETs of ``name`` (the last one repeats);
    ``cuts``: for GET number k (1-based) send only ``cuts[k-1]`` body bytes (``None``: all)
    and close the connection cleanly; ``no_length``: send no Content-Length (and ``*`` as the
    total of a Content-Range); ``cap``: send at most this many bytes in a 206 reply, with an
    honest Content-Range; ``ignore_range``: answer Range requests with the whole file."""

    port: int = 0
    versions: dict = field(default_factory=dict)
    cuts: list = field(default_factory=list)
    no_length: bool = False
    cap: int | None = None
    ignore_range: bool = False
    requests: list = field(default_factory=list)  # (Range header or None, status)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self, name: str, *bodies: bytes) -> str:
        self.versions[name] = list(bodies)
        return f"http://127.0.0.1:{self.port}/{name}"


class _ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        state: Scripted = self.server.state  # type: ignore[attr-defined]
        name = self.path.lstrip("/")
        with state._lock:
            number = len(state.requests) + 1
            served = sum(1 for r in state.requests if r[2] == name)
        bodies = state.versions.get(name)
        if not bodies:
            state.requests.append((self.headers.get("Range"), 404, name))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = bodies[min(served, len(bodies) - 1)]
        size, start, status = len(data), 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", (self.headers.get("Range") or "").strip())
        if match and not state.ignore_range:
            start, status = int(match.group(1)), 206
            if start >= size:
                state.requests.append((self.headers.get("Range"), 416, name))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        payload = data[start:]
        if status == 206 and state.cap is not None:
            payload = payload[: state.cap]
        with state._lock:
            state.requests.append((self.headers.get("Range"), status, name))
        self.send_response(status)
        if state.no_length:
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            total = "*" if state.no_length else str(size)
            self.send_header("Content-Range", f"bytes {start}-{start + len(payload) - 1}/{total}")
        self.end_headers()
        cut = state.cuts[number - 1] if number <= len(state.cuts) else None
        self.wfile.write(payload if cut is None else payload[:cut])
        self.wfile.flush()
        if cut is not None or state.no_length:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_WR)  # a clean close (FIN), not a reset
            except OSError:
                pass


@pytest.fixture
def scripted():
    with serve(_ScriptedHandler, Scripted()) as state:
        yield state


def _zip_bytes(n: int = 200_000, seed: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("top/a.bin", (seed or b"") + os.urandom(n))
        zf.writestr("top/b.txt", b"hello" * 100)
    return buf.getvalue()


def _tgz_bytes(n: int = 200_000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("top/a.bin", os.urandom(n)), ("top/b.txt", b"hello" * 100)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _corrupt(data: bytes, how: str) -> bytes:
    raw = bytearray(data)
    if how == "zip-crc":  # one byte of a stored member flipped: opens, fails testzip
        raw[len(raw) // 3] ^= 0xFF
    elif how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "gzip-trailer":  # the tar inside is complete; only the gzip CRC is wrong
        raw[-8] ^= 0xFF
    return bytes(raw)


def _lock_json(path: Path) -> dict:
    return json.loads(path.read_text())["files"]


def _aside(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}.corrupt-*"))


def test_no_length_early_close_archive_is_refetched(scripted, tmp_path, caplog):
    """(a) no Content-Length, connection closed half-way, nothing known: the archive check
    rejects the half file, it is moved aside and fetched again."""
    data = _zip_bytes()
    url = scripted.serve("set.zip", data)
    scripted.no_length = True
    scripted.cuts = [len(data) // 2]
    with caplog.at_level(logging.WARNING, logger="kboost.download"):
        dest = fetch(url, tmp_path / "set.zip", None, **FAST)
    assert dest.read_bytes() == data
    assert [r[:2] for r in scripted.requests] == [(None, 200), (None, 200)]
    aside = _aside(tmp_path, "set.zip")
    assert len(aside) == 1 and aside[0].stat().st_size == len(data) // 2
    assert "set.zip is a corrupt archive" in caplog.text and "fetching it again" in caplog.text


def test_no_length_early_close_resumes_to_the_locked_size(scripted, tmp_path):
    """(a) no Content-Length, closed half-way, size known from the lock file: not accepted;
    resumed with a Range request until the recorded size is reached."""
    data = _payload(300_000)
    url = scripted.serve("a.bin", data)
    lock = tmp_path / "downloads.lock.json"
    fetch(url, tmp_path / "first" / "a.bin", None, lock=lock, **FAST)  # records size and sha256
    scripted.requests.clear()
    scripted.no_length = True
    scripted.cuts = [100_000]
    dest = fetch(url, tmp_path / "second" / "a.bin", None, lock=lock, **FAST)
    assert dest.read_bytes() == data
    assert [r[:2] for r in scripted.requests] == [(None, 200), ("bytes=100000-", 206)]


def test_no_length_persistent_early_close_gives_up(scripted, tmp_path):
    data = _payload(300_000)
    url = scripted.serve("a.bin", data)
    lock = tmp_path / "downloads.lock.json"
    fetch(url, tmp_path / "first" / "a.bin", None, lock=lock, **FAST)
    scripted.no_length, scripted.ignore_range = True, True
    scripted.cuts = [None] + [150_000] * 10
    with pytest.raises(DownloadError, match=r"giving up .*closed at byte 150000 of 300000 "
                                            r"\(recorded in the lock file\)") as info:
        fetch(url, tmp_path / "second" / "a.bin", None, lock=lock, **FAST)
    assert url in str(info.value)
    assert not (tmp_path / "second" / "a.bin").exists()


def test_no_length_nothing_known_warns(scripted, tmp_path, caplog):
    """A plain file with no length, no pin and no lock entry cannot be checked: say so."""
    url = scripted.serve("a.bin", _payload(5000))
    scripted.no_length = True
    with caplog.at_level(logging.WARNING, logger="kboost.download"):
        fetch(url, tmp_path / "a.bin", None, **FAST)
    assert "sent no length" in caplog.text and "cannot be checked for completeness" in caplog.text


@pytest.mark.parametrize("server", ["content-length-cut", "capped-206"])
def test_truncated_announced_length_is_resumed(scripted, tmp_path, server):
    """(b) fewer bytes than the Content-Length (cut, clean close) or than the Content-Range
    total (206 replies that each hold only part of the rest): resumed, never accepted."""
    data = _payload(300_000)
    url = scripted.serve("a.bin", data)
    scripted.cuts = [120_000]
    if server == "capped-206":
        scripted.cap = 100_000
    dest = fetch(url, tmp_path / "a.bin", None, **FAST)
    assert dest.read_bytes() == data
    expected = {"content-length-cut": [None, "bytes=120000-"],
                "capped-206": [None, "bytes=120000-", "bytes=220000-"]}[server]
    assert [r[0] for r in scripted.requests] == expected


@pytest.mark.parametrize("change", ["flipped", "truncated", "appended"])
def test_kept_file_changed_after_download_is_refetched(scripted, tmp_path, caplog, change):
    """(c) the sha256 / size in the sidecar is re-checked on reuse."""
    data = _payload(50_000)
    url = scripted.serve("a.bin", data)
    dest = fetch(url, tmp_path / "a.bin", None, **FAST)
    changed = {"flipped": data[:100] + bytes([data[100] ^ 1]) + data[101:],
               "truncated": data[:20_000], "appended": data + b"x"}[change]
    dest.write_bytes(changed)
    with caplog.at_level(logging.WARNING, logger="kboost.download"):
        fetch(url, dest, None, **FAST)
    assert dest.read_bytes() == data
    assert len(scripted.requests) == 2
    aside = _aside(tmp_path, "a.bin")
    assert len(aside) == 1 and aside[0].read_bytes() == changed
    assert f"moved it to {aside[0].name} and fetching it again" in caplog.text
    reason = "differs from the sha256 recorded" if change == "flipped" else "bytes but a.bin.source.json records"
    assert reason in caplog.text


def test_kept_file_checked_against_the_lock(scripted, tmp_path, caplog):
    """A kept file (sidecar deleted too) that differs from the lock entry is moved aside."""
    data = _payload(50_000)
    url = scripted.serve("a.bin", data)
    lock = tmp_path / "downloads.lock.json"
    dest = fetch(url, tmp_path / "a.bin", None, lock=lock, **FAST)
    dest.write_bytes(os.urandom(50_000))
    sidecar_path(dest).unlink()
    with caplog.at_level(logging.WARNING, logger="kboost.download"):
        fetch(url, dest, None, lock=lock, **FAST)
    assert dest.read_bytes() == data
    assert f"differs from the entry in {lock}" in caplog.text


@pytest.mark.parametrize("suffix,how", [(".zip", "zip-crc"), (".zip", "truncated"),
                                        (".tar.gz", "truncated"), (".tar.gz", "gzip-trailer")])
def test_corrupt_archive_is_moved_aside_and_refetched(scripted, tmp_path, caplog, suffix, how):
    """(d) a corrupt download (complete transfer of bad bytes) is not renamed into place."""
    good = _zip_bytes() if suffix == ".zip" else _tgz_bytes()
    bad = _corrupt(good, how)
    name = f"set{suffix}"
    url = scripted.serve(name, bad, good)
    with caplog.at_level(logging.WARNING, logger="kboost.download"):
        dest = fetch(url, tmp_path / name, None, **FAST)
    assert dest.read_bytes() == good
    aside = _aside(tmp_path, name)
    assert len(aside) == 1 and aside[0].read_bytes() == bad
    assert f"{name} is a corrupt archive" in caplog.text and aside[0].name in caplog.text
    extract(dest, tmp_path / "out")  # and the kept one extracts


def test_persistently_corrupt_archive_fails_after_one_refetch(scripted, tmp_path):
    bad = _corrupt(_zip_bytes(), "zip-crc")
    url = scripted.serve("set.zip", bad)
    with pytest.raises(CorruptArchiveError) as info:
        fetch(url, tmp_path / "set.zip", None, **FAST)
    message = str(info.value)
    aside = _aside(tmp_path, "set.zip")
    assert len(aside) == 1  # only the newest bad copy is kept
    assert url in message and "fails its CRC check" in message and "second download" in message
    assert str(aside[0]) in message and "fetched again on the next run" in message
    assert len(scripted.requests) == 2
    assert not (tmp_path / "set.zip").exists() and not (tmp_path / "set.zip.part").exists()


def test_corrupt_archive_matching_its_pin_is_not_refetched(scripted, tmp_path):
    bad = _corrupt(_tgz_bytes(), "truncated")
    url = scripted.serve("set.tar.gz", bad)
    with pytest.raises(CorruptArchiveError, match="match the pinned checksum, so the published file itself is broken"):
        fetch(url, tmp_path / "set.tar.gz", _md5(bad), **FAST)
    assert len(scripted.requests) == 1


def test_kept_archive_never_checked_is_checked(scripted, tmp_path):
    """A file left by an earlier version (no sidecar, never checked) that is corrupt is refetched."""
    good = _zip_bytes()
    url = scripted.serve("set.zip", good)
    (tmp_path / "set.zip").write_bytes(_corrupt(good, "truncated"))
    fetch(url, tmp_path / "set.zip", None, **FAST)
    assert (tmp_path / "set.zip").read_bytes() == good and len(_aside(tmp_path, "set.zip")) == 1


def test_extract_once_moves_a_corrupt_archive_aside(tmp_path):
    archive = tmp_path / "set.zip"
    archive.write_bytes(_corrupt(_zip_bytes(), "zip-crc"))
    sidecar_path(archive).write_text("{}")
    with pytest.raises(CorruptArchiveError, match="fetched again on the next run") as info:
        extract_once(archive, tmp_path / "out")
    aside = _aside(tmp_path, "set.zip")
    assert len(aside) == 1 and str(aside[0]) in str(info.value)
    assert not archive.exists() and not sidecar_path(archive).exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("build,how", [("zip", None), ("tgz", None), ("tar", None),
                                       ("tar", "truncated"), ("tar", "header"), ("zip", "garbage")])
def test_check_archive(tmp_path, build, how):
    data = {"zip": _zip_bytes, "tgz": _tgz_bytes}.get(build, lambda: gzip.decompress(_tgz_bytes()))()
    suffix = {"zip": ".zip", "tgz": ".tgz", "tar": ".tar"}[build]
    if how == "truncated":  # cut exactly after the first member's data: tarfile alone stops silently
        data = data[: 512 + 200_000 + (-200_000 % 512)]
    elif how == "header":  # second member's header damaged: tarfile alone stops silently
        raw = bytearray(data)
        raw[512 + 200_000 + (-200_000 % 512) + 100] ^= 0xFF
        data = bytes(raw)
    elif how == "garbage":
        data = os.urandom(5000)
    path = tmp_path / f"a{suffix}"
    path.write_bytes(data)
    if how is None:
        check_archive(path)
        extract(path, tmp_path / "out")
        assert (tmp_path / "out" / "top" / "b.txt").read_bytes() == b"hello" * 100
        return
    with pytest.raises(CorruptArchiveError, match="a" + re.escape(suffix) + ": corrupt archive"):
        check_archive(path)
    with pytest.raises(CorruptArchiveError, match="a" + re.escape(suffix) + ": corrupt archive"):
        extract(path, tmp_path / "out")  # extract() itself does not stop silently either
    assert _leftovers(tmp_path) == [path.name]


def test_lock_file_written_and_enforced(scripted, tmp_path):
    """(e) the first fetch records url -> file, sha256, size; another machine (an empty
    downloads folder, the same lock) fetching changed bytes gets an error naming the URL."""
    data = _payload(40_000)
    url = scripted.serve("a.bin", data)
    lock = tmp_path / "downloads.lock.json"
    fetch(url, tmp_path / "one" / "a.bin", None, lock=lock, **FAST)
    entry = {"file": "a.bin", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert _lock_json(lock) == {url: entry}
    assert load_lock(lock) == {url: entry}
    text = lock.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # sorted, stable
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left

    fetch(url, tmp_path / "two" / "a.bin", None, lock=lock, **FAST)  # same bytes: fine
    assert lock.read_text() == text

    changed = os.urandom(len(data))  # same size, other bytes: only the sha256 tells
    scripted.serve("a.bin", changed)
    with pytest.raises(DownloadError) as info:
        fetch(url, tmp_path / "three" / "a.bin", None, lock=lock, **FAST)
    message = str(info.value)
    assert url in message and str(lock) in message and "delete the entry" in message
    assert entry["sha256"] in message and hashlib.sha256(changed).hexdigest() in message
    assert not (tmp_path / "three" / "a.bin").exists()
    assert lock.read_text() == text

    scripted.serve("a.bin", data + b"more")  # other size: refused from the Content-Length
    scripted.requests.clear()
    with pytest.raises(DownloadError, match=f"announces {len(data) + 4} bytes but .* records {len(data)}"):
        fetch(url, tmp_path / "four" / "a.bin", None, lock=lock, **FAST)
    assert len(scripted.requests) == 1 and not (tmp_path / "four" / "a.bin.part").exists()

    scripted.no_length = True  # other size and no length: the size check after the transfer
    with pytest.raises(DownloadError, match=f"{len(data) + 4} bytes"):
        fetch(url, tmp_path / "five" / "a.bin", None, lock=lock, **FAST)
    assert lock.read_text() == text


def test_lock_entry_added_for_a_kept_file_and_bad_lock_named(scripted, tmp_path):
    data = _payload(1000)
    url = scripted.serve("a.bin", data)
    dest = fetch(url, tmp_path / "a.bin", None, **FAST)  # no lock used
    lock = tmp_path / "downloads.lock.json"
    fetch(url, dest, None, lock=lock, **FAST)
    assert len(scripted.requests) == 1  # reused, and recorded
    assert _lock_json(lock)[url]["sha256"] == hashlib.sha256(data).hexdigest()
    lock.write_text("{not json")
    with pytest.raises(DownloadError, match=re.escape(str(lock)) + ".*not a valid download lock file"):
        fetch(url, dest, None, lock=lock, **FAST)


def test_fetch_options_lock_default(tmp_path):
    assert lock_path(tmp_path / "data" / "downloads") == tmp_path / "data" / "downloads.lock.json"
    assert fetch_options({"retries": 2, "timeout": None}) == {"retries": 2}
    assert fetch_options({}, tmp_path / "dl") == {"lock": tmp_path / "dl.lock.json"}


def test_pinned_checksum_with_lock(scripted, tmp_path):
    """(f) a pinned md5 is still what the sidecar records; the lock gets the sha256."""
    data = _payload(20_000)
    lock = tmp_path / "downloads.lock.json"
    url = scripted.serve("a.bin", data)
    dest = fetch(url, tmp_path / "a.bin", _md5(data), lock=lock, **FAST)
    assert recorded_checksum(dest) == _md5(data)
    assert _lock_json(lock)[url]["sha256"] == hashlib.sha256(data).hexdigest()
    fetch(url, dest, _md5(data), lock=lock, **FAST)
    assert len(scripted.requests) == 1
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch(url, tmp_path / "b.bin", "md5:" + "0" * 32, lock=lock, **FAST)
    assert not (tmp_path / "b.bin").exists() and not (tmp_path / "b.bin.part").exists()
