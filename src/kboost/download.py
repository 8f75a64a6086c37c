"""Resumable, verified downloads, a lock file of what was fetched, and safe archive extraction.

``fetch`` streams a URL to ``<dest>.part``, resumes an interrupted transfer with an HTTP
``Range`` request and retries transient failures with exponential back-off. Before the file is
renamed to ``dest`` it must

* reach the announced length (``Content-Length`` / ``Content-Range`` total) and, where the
  lock file knows it, the recorded size: a shorter transfer is resumed, never accepted;
* match the pinned checksum (``md5:`` / ``sha256:``), when there is one;
* match the sha256 and size recorded for its URL in the lock file, when there is an entry;
* be a readable archive, for .zip (every member's CRC, ``ZipFile.testzip``) and .tar /
  .tar.gz / .tgz (listed to the end-of-archive marker, gzip CRC checked).

A sidecar ``<dest>.source.json`` records the URL, the checksum it was verified against (or the
computed SHA-256 when nothing was pinned), its sha256 and size. A kept ``dest`` is re-checked
against all of these on every call; one that no longer matches, or a downloaded archive that
is corrupt, is moved aside to ``<dest>.corrupt-<UTC time>`` (only the newest such copy is
kept) with a warning, and fetched again (at most once per call).

The lock file (``lock_path(downloads_dir)``, by default ``data/downloads.lock.json``) maps each
URL to the file name, sha256 and size of its bytes. ``fetch`` adds an entry the first time a
URL is fetched; afterwards a download that differs is an error, so another machine gets the
same bytes or a clear message.

``extract`` unpacks a .tar.gz / .tgz / .tar / .zip archive into a temporary sibling of the
target and renames it into place only when every member was safe and readable.
"""
from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import requests
import urllib3
from tqdm import tqdm

from .errors import KboostError
from .fsutil import atomic_dir, file_digest, write_json

try:  # serialises updates of the lock file between processes (POSIX only)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

CHUNK = 1 << 20
NET_CHUNK = 1 << 16  # small reads: a dropped connection loses at most this much
_HEX_LENGTH = {"md5": 32, "sha256": 64}
_RETRY_STATUS = {429}  # plus every 5xx
LOCK_VERSION = 1
_LOCK_ABOUT = ("Files fetched by kboost.download.fetch: URL -> file name, sha256 and size in bytes. "
               "Written by the pipeline; commit it so other machines get the same bytes. If an "
               "upstream file legitimately changed, delete its entry and run again.")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class DownloadError(KboostError, RuntimeError):
    """A download or extraction that failed; the message names the URL or file."""


class CorruptArchiveError(DownloadError):
    """An archive whose bytes are damaged (truncated, bad CRC, unreadable structure)."""


class _Transient(Exception):
    """A failure worth retrying (connection dropped, timeout, 5xx, 429, short transfer)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


# --------------------------------------------------------------------------- checksums

def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"md5:<hex>"`` / ``"sha256:<hex>"`` into (algorithm, lower-case hex)."""
    algo, sep, digest = str(checksum).partition(":")
    algo, digest = algo.strip().lower(), digest.strip().lower()
    if not sep or algo not in _HEX_LENGTH:
        raise DownloadError(f"checksum {checksum!r}: expected 'md5:<hex>' or 'sha256:<hex>'")
    if len(digest) != _HEX_LENGTH[algo] or not re.fullmatch(r"[0-9a-f]+", digest):
        raise DownloadError(f"checksum {checksum!r}: not a valid {algo} hex digest")
    return algo, digest


def _digests(path: Path, algos: set[str]) -> dict[str, str]:
    """Hex digests of ``path`` for every algorithm in ``algos`` (always sha256), in one read."""
    algos = set(algos) | {"sha256"}
    if len(algos) == 1:
        return {"sha256": file_digest(path, "sha256")}
    hashes = {a: hashlib.new(a) for a in sorted(algos)}
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            for h in hashes.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hashes.items()}


def sidecar_path(dest: Path) -> Path:
    """Where :func:`fetch` records the URL and verified checksum of ``dest``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".source.json")


def _read_sidecar(dest: Path) -> dict | None:
    try:
        record = json.loads(sidecar_path(dest).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def recorded_checksum(dest: Path) -> str | None:
    """The checksum recorded by :func:`fetch` for ``dest`` (``None`` if there is no sidecar)."""
    record = _read_sidecar(Path(dest))
    return record.get("checksum") if record else None


# --------------------------------------------------------------------------- lock file

def lock_path(downloads_dir: str | os.PathLike) -> Path:
    """The default lock file of a downloads folder: ``<downloads_dir>.lock.json`` next to it
    (``data/downloads`` -> ``data/downloads.lock.json``)."""
    downloads_dir = Path(downloads_dir)
    return downloads_dir.with_name(downloads_dir.name + ".lock.json")


def load_lock(path: str | os.PathLike) -> dict[str, dict]:
    """The entries ``{url: {"file", "sha256", "size"}}`` of a lock file (empty if it does not exist)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise DownloadError(f"{path}: cannot read the download lock file ({exc})") from exc
    try:
        data = json.loads(text)
        if not isinstance(data.get("version"), int) or data["version"] > LOCK_VERSION:
            raise ValueError(f"unknown version {data.get('version')!r} (this kboost reads {LOCK_VERSION})")
        files = data["files"]
        if not isinstance(files, dict):
            raise ValueError("'files' is not an object")
        for url, entry in files.items():
            if not isinstance(entry.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
                raise ValueError(f"entry {url!r}: 'sha256' is not a lower-case hex sha256")
            if not isinstance(entry.get("size"), int) or entry["size"] < 0:
                raise ValueError(f"entry {url!r}: 'size' is not a byte count")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DownloadError(f"{path}: not a valid download lock file ({exc}); fix or delete it") from exc
    return files


def _lock_entry(lock: Path | None, url: str) -> dict | None:
    return None if lock is None else load_lock(lock).get(url)


@contextlib.contextmanager
def _locked_dir(directory: Path):
    """Hold an exclusive flock on ``directory`` (no extra file is created)."""
    if fcntl is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _lock_record(lock: Path, url: str, name: str, sha256: str, size: int) -> None:
    """Add ``url`` to the lock file unless it is there already (read-merge-write under a flock)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with _locked_dir(lock.parent):
        files = load_lock(lock)
        if url in files:
            return
        files[url] = {"file": name, "sha256": sha256, "size": size}
        write_json(lock, {"about": _LOCK_ABOUT, "version": LOCK_VERSION, "files": files})
    log.info("%s: recorded %s (sha256:%s, %d bytes) in %s", url, name, sha256, size, lock)


def _lock_mismatch(url: str, lock: Path, entry: dict, got: str, detail: str) -> DownloadError:
    return DownloadError(
        f"{url}: the download does not match {lock}: expected sha256:{entry['sha256']} "
        f"({entry['size']} bytes), got {got}{detail}. If the upstream file legitimately changed, "
        f"delete the entry for this URL from {lock} and run again; otherwise check the mirror"
    )


# --------------------------------------------------------------------------- moving bad files aside

def _move_aside(path: Path, final_name: str) -> Path:
    """Rename ``path`` to ``<final_name>.corrupt-<UTC time>`` next to it; drop older such copies."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{final_name}.corrupt-{stamp}")
    for old in path.parent.glob(glob.escape(final_name) + ".corrupt-*"):
        if old != path:
            log.info("removing an older set-aside copy %s", old)
            old.unlink(missing_ok=True)
    os.replace(path, aside)
    return aside


def _reject_dest(dest: Path) -> Path:
    """Move a kept ``dest`` aside (see :func:`_move_aside`) and remove its sidecar."""
    aside = _move_aside(dest, dest.name)
    sidecar_path(dest).unlink(missing_ok=True)
    return aside


# --------------------------------------------------------------------------- archive integrity

def archive_kind(name: str) -> str | None:
    """``"zip"``, ``"tar"`` or ``None`` (not an archive :func:`extract` unpacks) for a file name."""
    name = name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    return None


def check_archive(path: str | os.PathLike, name: str | None = None) -> None:
    """Read the whole archive at ``path`` (type from ``name``, default its own name) and raise
    :class:`CorruptArchiveError` if it is truncated or damaged. Non-archives pass unchecked.

    A .zip must open and pass ``ZipFile.testzip`` (every member decompressed, CRC checked); a
    .tar / .tar.gz / .tgz must list to its end-of-archive marker and, if gzip-compressed, end
    with a valid gzip trailer (CRC and length).
    """
    path = Path(path)
    kind = archive_kind(name or path.name)
    if kind is None:
        return
    try:
        problem = _check_zip(path) if kind == "zip" else _check_tar(path)
    except NotImplementedError as exc:  # e.g. a zip compression method Python cannot read
        raise DownloadError(f"{path}: cannot check or extract this archive ({exc})") from exc
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        if isinstance(exc, gzip.BadGzipFile):
            problem = f"{type(exc).__name__}: {exc}"
        else:
            raise DownloadError(f"{path}: cannot read archive ({exc})") from exc
    if problem:
        raise CorruptArchiveError(f"{path}: corrupt archive ({problem})")


def _check_zip(path: Path) -> str | None:
    with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()
    return None if bad is None else f"member {bad!r} fails its CRC check"


def _check_tar(path: Path) -> str | None:
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        with stream, tarfile.open(fileobj=stream, mode="r:") as tar:
            members = sum(1 for _ in tar)  # forward seeks only: one pass over the data
            return _tar_end_problem(tar, members)


def _tar_end_problem(tar: tarfile.TarFile, members: int) -> str | None:
    """What is wrong with the end of a tar that was listed to its end (``None``: nothing).

    tarfile stops silently at a damaged header or where the data ends; a complete archive has
    a zero block (the end-of-archive marker) where the listing stopped. The rest of the stream
    is read too, so a gzip trailer (CRC and length) is checked.
    """
    stream = tar.fileobj
    stream.seek(tar.offset)
    marker = stream.read(tarfile.BLOCKSIZE)
    if len(marker) < tarfile.BLOCKSIZE or marker.strip(b"\x00"):
        what = "data ends" if len(marker) < tarfile.BLOCKSIZE else "an unreadable header"
        return f"{what} after {members} member(s) at byte {tar.offset}, before the end-of-archive marker"
    while stream.read(CHUNK):
        pass
    return None


# --------------------------------------------------------------------------- fetch

def fetch(
    url: str,
    dest: str | os.PathLike,
    checksum: str | None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60,
    progress: bool = True,
    lock: str | os.PathLike | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``.

    ``checksum`` is ``"md5:<hex>"``, ``"sha256:<hex>"`` or ``None`` (then the SHA-256 is
    computed, logged with a warning and recorded in the sidecar). ``lock`` is the lock file
    (see :func:`lock_path`; ``None``: none is used): its entry for ``url`` must match, and one
    is added when there is none. An existing ``dest`` that still matches its sidecar, the pin
    and the lock entry (and, for an archive, reads completely) is kept without downloading;
    otherwise it is moved aside and fetched again. ``url`` may also be a ``file://`` URL or a
    local path (the file is copied). Raises :class:`DownloadError`.
    """
    dest = Path(dest)
    pinned = parse_checksum(checksum) if checksum is not None else None  # reject a bad pin early
    lock = Path(lock) if lock is not None else None
    entry = _lock_entry(lock, url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    if dest.is_file():
        reason = _check_kept(dest, url, pinned, lock, entry)
        if reason is None:
            return dest
        aside = _reject_dest(dest)
        log.warning("%s: %s; moved it to %s and fetching it again", dest, reason, aside.name)

    for attempt in (1, 2):
        local = _local_source(url)
        if local is not None:
            _copy_local(local, part, url, progress)
            length_known = True
        else:
            length_known = _download_with_retries(
                url, part, retries, backoff, timeout, progress, entry["size"] if entry else None, lock,
            )
        sums = _digests(part, {pinned[0]} if pinned else set())
        sha256, size = sums["sha256"], part.stat().st_size
        if pinned and sums[pinned[0]] != pinned[1]:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: checksum mismatch for {dest.name}: expected "
                                f"{pinned[0]}:{pinned[1]}, got {pinned[0]}:{sums[pinned[0]]}")
        if entry and (entry["sha256"] != sha256 or entry["size"] != size):
            aside = _move_aside(part, dest.name)
            raise _lock_mismatch(url, lock, entry, f"sha256:{sha256} ({size} bytes)",
                                 f"; the download was moved to {aside}")
        try:
            check_archive(part, dest.name)
        except CorruptArchiveError as exc:
            aside = _move_aside(part, dest.name)
            problem = str(exc).split(": ", 1)[-1]
            if pinned or entry or attempt == 2:
                why = ("its bytes match the pinned checksum, so the published file itself is "
                       "broken (check the pin and the mirror)" if pinned else
                       f"its bytes match {lock}, so the recorded file itself is broken (check the "
                       f"mirror; delete the entry if the upstream file was fixed)" if entry else
                       "the same happened on a second download (the mirror may serve a broken file)")
                raise CorruptArchiveError(
                    f"{url}: downloaded {dest.name} is a {problem}; {why}; moved it to {aside} "
                    f"(it will be fetched again on the next run)") from exc
            log.warning("%s: downloaded %s is a %s; moved it to %s and fetching it again",
                        url, dest.name, problem, aside.name)
            continue
        if not length_known and not entry and not pinned and archive_kind(dest.name) is None:
            log.warning("%s: the server sent no length and nothing is pinned, so %s (%d bytes) "
                        "cannot be checked for completeness", url, dest.name, size)
        break

    os.replace(part, dest)
    recorded = f"{pinned[0]}:{pinned[1]}" if pinned else _unpinned(url, sha256, lock)
    _write_sidecar(dest, url, recorded, sha256, pinned=pinned is not None,
                   archive_checked=archive_kind(dest.name) is not None)
    if lock is not None and entry is None:
        _lock_record(lock, url, dest.name, sha256, size)
    return dest


def _unpinned(url: str, sha256: str, lock: Path | None) -> str:
    got = f"sha256:{sha256}"
    where = f"recorded next to the file and in {lock}" if lock else "recorded next to the file"
    log.warning("%s: no checksum pinned; computed %s (%s; later runs are checked against it)",
                url, got, where)
    return got


def _check_kept(dest: Path, url: str, pinned: tuple[str, str] | None, lock: Path | None,
                entry: dict | None) -> str | None:
    """``None`` when the kept ``dest`` still verifies (sidecar and lock updated), else why not."""
    record = _read_sidecar(dest) or {}
    size = dest.stat().st_size
    sidecar = sidecar_path(dest).name
    after = "the file was changed or damaged after download"
    expected: list[tuple[str, str, str, str]] = []  # (what, algo, hex, likely cause)
    if pinned:
        expected.append(("the pinned checksum", *pinned, "the file or the pin changed"))
    for key in ("sha256", "checksum"):
        value = record.get(key)
        if isinstance(value, str) and value:
            try:
                algo, digest = parse_checksum(value if ":" in value else f"sha256:{value}")
            except DownloadError:
                return f"its record {sidecar} holds an invalid checksum {value!r}"
            what = f"the {'sha256' if algo == 'sha256' else 'checksum'} recorded in {sidecar}"
            expected.append((what, algo, digest, after))
    if entry:
        expected.append((f"the entry in {lock}", "sha256", entry["sha256"],
                         "the file changed, or the lock file was updated elsewhere"))
    for what, want, cause in ((sidecar, record.get("bytes"), after),
                              (str(lock), entry["size"] if entry else None,
                               "the file changed, or the lock file was updated elsewhere")):
        if isinstance(want, int) and want != size:
            return f"it has {size} bytes but {what} records {want}; {cause}"
    sums = _digests(dest, {algo for _, algo, _, _ in expected})
    for what, algo, digest, cause in expected:
        if sums[algo] != digest:
            return f"its {algo} {sums[algo]} differs from {what} ({algo}:{digest}); {cause}"
    if not record.get("archive_checked"):
        try:
            check_archive(dest)
        except CorruptArchiveError as exc:
            return str(exc).split(": ", 1)[-1]
    checksum = f"{pinned[0]}:{pinned[1]}" if pinned else f"sha256:{sums['sha256']}"
    if not pinned and not record and not entry:
        log.warning("%s: no checksum pinned and no record of the download; computed %s", dest, checksum)
    log.info("%s already present and verified (%s)", dest, checksum)
    _write_sidecar(dest, url, checksum, sums["sha256"], pinned=pinned is not None,
                   archive_checked=archive_kind(dest.name) is not None)
    if lock is not None and entry is None:
        _lock_record(lock, url, dest.name, sums["sha256"], size)
    return None


def _write_sidecar(dest: Path, url: str, checksum: str, sha256: str, pinned: bool,
                   archive_checked: bool) -> None:
    write_json(sidecar_path(dest), {
        "url": url, "file": dest.name, "bytes": dest.stat().st_size,
        "checksum": checksum, "sha256": sha256, "pinned": pinned,
        "archive_checked": archive_checked,
    })


def _local_source(url: str) -> Path | None:
    """The local file a ``file://`` URL or plain path refers to; ``None`` for remote URLs."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise DownloadError(f"{url}: unsupported URL scheme {parsed.scheme!r}")
    return Path(url)


def _copy_local(source: Path, part: Path, url: str, progress: bool) -> None:
    if not source.is_file():
        raise DownloadError(f"{url}: local file {source} does not exist")
    part.unlink(missing_ok=True)
    total = source.stat().st_size
    try:
        with open(source, "rb") as src, open(part, "wb") as out, _bar(part, total, 0, progress) as bar:
            for block in iter(lambda: src.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: cannot copy {source}: {exc}") from exc


def _bar(part: Path, total: int | None, initial: int, progress: bool) -> tqdm:
    name = part.name[: -len(".part")] if part.name.endswith(".part") else part.name
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=name, disable=not progress, leave=False)


def _download_with_retries(url: str, part: Path, retries: int, backoff: float, timeout: float,
                           progress: bool, expected_size: int | None = None,
                           lock: Path | None = None) -> bool:
    """Download ``url`` into ``part`` (resuming it); return whether the length was known
    (announced by the server or ``expected_size``, and reached)."""
    attempt = 0
    with requests.Session() as session:
        while True:
            try:
                return _download_once(session, url, part, timeout, progress, expected_size, lock)
            except _Transient as exc:
                attempt += 1
                if attempt > retries:
                    raise DownloadError(
                        f"{url}: giving up after {attempt} attempt(s): {exc}"
                        + (f" (partial data kept in {part} for the next run)" if part.exists() else "")
                    ) from exc
                delay = backoff * (2 ** (attempt - 1))
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, 300.0))
                log.warning("%s: %s; retry %d/%d in %.1f s", url, exc, attempt, retries, delay)
                time.sleep(delay)


def _check_announced(url: str, total: int | None, expected_size: int | None, lock: Path | None) -> None:
    if total is not None and expected_size is not None and total != expected_size:
        raise DownloadError(
            f"{url}: the server announces {total} bytes but {lock or 'the lock file'} records "
            f"{expected_size}; if the upstream file legitimately changed, delete the entry for "
            f"this URL from {lock or 'the lock file'} and run again; otherwise check the mirror"
        )


def _download_once(session: requests.Session, url: str, part: Path, timeout: float,
                   progress: bool, expected_size: int | None = None, lock: Path | None = None) -> bool:
    """One HTTP request; appends to ``part`` when the server honours the Range header.

    A transfer that ends before the announced length (or ``expected_size`` when the server
    announces none) raises :class:`_Transient`, so it is resumed rather than accepted.
    """
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        log.info("%s: %s is longer than the recorded %d bytes; restarting", url, part.name, expected_size)
        part.unlink()
        offset = 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
    with response:
        status = response.status_code
        if status == 416 and offset:
            # Nothing left to send: the partial file is complete, unless the server (or the
            # lock file) says the file has another length (then start again).
            match = re.match(r"bytes\s+\*/(\d+)", response.headers.get("Content-Range", ""))
            remote = int(match.group(1)) if match else expected_size
            if remote is not None and remote != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"partial file has {offset} bytes but the remote file has "
                                 f"{remote}; restarting")
            log.info("%s: server reports %s already complete (%d bytes)", url, part.name, offset)
            return remote is not None
        if status in _RETRY_STATUS or 500 <= status < 600:
            raise _Transient(f"HTTP {status}", _retry_after(response))
        if status == 206 and offset:
            start, total = _content_range(response)
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"server resumed at byte {start}, expected {offset}; restarting")
            _check_announced(url, total, expected_size, lock)
            mode = "ab"
        elif status == 200:
            if offset:
                log.info("%s: server ignored the Range request; restarting from zero", url)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length", "").strip()
            total = int(length) if length.isdigit() else None
            _check_announced(url, total, expected_size, lock)
        else:
            raise DownloadError(f"{url}: HTTP {status} {response.reason or ''}".rstrip())
        announced = total is not None
        if total is None:
            total = expected_size

        # Read the raw bytes (no content decoding: the checksum is of the file as served) in
        # small pieces, so a dropped connection keeps everything received before it.
        raw = response.raw
        read = raw.read1 if hasattr(raw, "read1") else raw.read
        written = offset
        with open(part, mode) as out, _bar(part, total, offset, progress) as bar:
            while True:
                try:
                    block = read(NET_CHUNK, decode_content=False)
                except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
                    raise _Transient(f"transfer interrupted at byte {written}: {type(exc).__name__}") from exc
                if not block:
                    break
                out.write(block)
                written += len(block)
                bar.update(len(block))
        if total is not None and written < total:
            source = "announced" if announced else "recorded in the lock file"
            raise _Transient(f"connection closed at byte {written} of {total} ({source})")
        return total is not None


def _content_range(response: requests.Response) -> tuple[int, int | None]:
    match = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match:
        raise _Transient("206 response without a usable Content-Range header")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


# --------------------------------------------------------------------------- extract

def extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract ``archive`` (.tar.gz, .tgz, .tar, .zip) so its members end up under ``target``.

    Members with absolute paths or ``..`` components, links of any kind and special files
    are refused. Extraction goes to a temporary sibling renamed onto ``target`` at the end,
    so on any failure (:class:`DownloadError`) nothing is left behind and an existing
    ``target`` is untouched.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DownloadError(f"{archive}: archive does not exist")
    name = archive.name.lower()
    if name.endswith(".zip"):
        extractor = _extract_zip
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        extractor = _extract_tar
    else:
        raise DownloadError(f"{archive}: unsupported archive type (expected .tar.gz, .tgz, .tar or .zip)")
    try:
        with atomic_dir(target) as tmp:
            extractor(archive, tmp)
    except DownloadError:
        raise
    except NotImplementedError as exc:  # e.g. a zip compression method Python cannot read
        raise DownloadError(f"{archive}: cannot extract this archive ({exc})") from exc
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, gzip.BadGzipFile) as exc:
        raise CorruptArchiveError(f"{archive}: corrupt archive ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        raise DownloadError(f"{archive}: cannot extract ({type(exc).__name__}: {exc})") from exc
    return target


def _safe_member_path(archive: Path, name: str) -> PurePosixPath | None:
    """Relative path for a member name; ``None`` for the archive root; raise if unsafe."""
    if "\x00" in name:
        raise DownloadError(f"{archive}: unsafe member {name!r} (NUL byte in name)")
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        raise DownloadError(f"{archive}: unsafe member {name!r} (absolute path)")
    parts = [p for p in normalized.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DownloadError(f"{archive}: unsafe member {name!r} ('..' component)")
    return PurePosixPath(*parts) if parts else None


def _extract_tar(archive: Path, root: Path) -> None:
    with tarfile.open(archive, mode="r:*") as tar:
        members = 0
        for member in tar:  # streams: every member is checked before it is written
            members += 1
            rel = _safe_member_path(archive, member.name)
            if member.issym() or member.islnk():
                raise DownloadError(
                    f"{archive}: unsafe member {member.name!r} (link to {member.linkname!r}; links are not allowed)"
                )
            if not (member.isfile() or member.isdir()):
                raise DownloadError(f"{archive}: unsafe member {member.name!r} (device, FIFO or other special file)")
            if member.isfile() and rel is not None:
                source = tar.extractfile(member)
                if source is None:
                    raise DownloadError(f"{archive}: cannot read member {member.name!r}")
            else:
                source = None
            _write_member(root, rel, source)
        problem = _tar_end_problem(tar, members)
        if problem:
            raise CorruptArchiveError(f"{archive}: corrupt archive ({problem})")


def _extract_zip(archive: Path, root: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        paths = []
        for info in infos:  # check every member before writing anything
            paths.append(_safe_member_path(archive, info.filename))
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if stat.S_ISLNK(mode):
                raise DownloadError(f"{archive}: unsafe member {info.filename!r} (symbolic link)")
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise DownloadError(f"{archive}: unsafe member {info.filename!r} (special file)")
        for info, rel in zip(infos, paths):
            # zipfile checks each member's CRC while it is read.
            _write_member(root, rel, None if info.is_dir() or rel is None else zf.open(info))


def _write_member(root: Path, rel: PurePosixPath | None, source) -> None:
    """Create a checked member under ``root``: a directory when ``source`` is None, else a file."""
    if rel is None:
        return
    path = root.joinpath(*rel.parts)
    if source is None:
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with source, open(path, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def fetch_options(cfg: dict, downloads_dir: str | os.PathLike | None = None) -> dict:
    """Keyword arguments of :func:`fetch` for a source cfg: its optional ``retries`` /
    ``backoff`` / ``timeout`` keys and, given ``downloads_dir``, ``lock=lock_path(downloads_dir)``."""
    options = {k: cfg[k] for k in ("retries", "backoff", "timeout") if cfg.get(k) is not None}
    if downloads_dir is not None:
        options["lock"] = lock_path(downloads_dir)
    return options


def extract_once(archive: Path, target: Path) -> None:
    """Extract unless ``target`` already holds an extraction of this very archive.

    A corrupt archive is moved aside (``<name>.corrupt-<UTC time>``, its sidecar removed) so
    that the next run fetches it again; the error says so.
    """
    archive = Path(archive)
    marker = Path(target) / ".extracted-from"
    stamp = f"{archive.name} {recorded_checksum(archive)}"
    if marker.is_file() and marker.read_text() == stamp:
        return
    try:
        extract(archive, target)
    except CorruptArchiveError as exc:
        aside = _reject_dest(archive)
        raise CorruptArchiveError(f"{exc}; moved it to {aside} (it will be fetched again on the "
                                  f"next run)") from exc
    marker.write_text(stamp)
