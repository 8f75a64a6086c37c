"""fetch(): resume, retry, verification; extract(): safety and atomicity."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from kboost.download import DownloadError, extract, fetch, recorded_checksum, sidecar_path

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
