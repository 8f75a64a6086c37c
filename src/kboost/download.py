"""Resumable, verified downloads and safe archive extraction.

``fetch`` streams a URL to ``<dest>.part``, resumes an interrupted transfer with an HTTP
``Range`` request, retries transient failures with exponential back-off, verifies a pinned
checksum and only then renames the file to ``dest``. A sidecar ``<dest>.source.json`` records
the URL and the checksum the file was verified against (or, when nothing was pinned, the
SHA-256 that was computed).

``extract`` unpacks a .tar.gz / .tgz / .tar / .zip archive into a temporary sibling of the
target and renames it into place only when every member was safe and readable.
"""
from __future__ import annotations

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
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import requests
import urllib3
from tqdm import tqdm

from .errors import KboostError
from .fsutil import atomic_dir, file_digest, write_json

log = logging.getLogger(__name__)

CHUNK = 1 << 20
NET_CHUNK = 1 << 16  # small reads: a dropped connection loses at most this much
_HEX_LENGTH = {"md5": 32, "sha256": 64}
_RETRY_STATUS = {429}  # plus every 5xx


class DownloadError(KboostError, RuntimeError):
    """A download or extraction that failed; the message names the URL or file."""


class _Transient(Exception):
    """A failure worth retrying (connection dropped, timeout, 5xx, 429)."""

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


def _verify(path: Path, checksum: str | None, url: str) -> str:
    """Return ``"algo:hex"`` of ``path``; raise DownloadError if it differs from ``checksum``."""
    if checksum is None:
        got = "sha256:" + file_digest(path, "sha256")
        log.warning("%s: no checksum pinned; computed %s (pin it in params to verify later runs)",
                    url, got)
        return got
    algo, expected = parse_checksum(checksum)
    got = file_digest(path, algo)
    if got != expected:
        raise DownloadError(
            f"{url}: checksum mismatch for {path.name}: expected {algo}:{expected}, got {algo}:{got}"
        )
    return f"{algo}:{got}"


def sidecar_path(dest: Path) -> Path:
    """Where :func:`fetch` records the URL and verified checksum of ``dest``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".source.json")


def recorded_checksum(dest: Path) -> str | None:
    """The checksum recorded by :func:`fetch` for ``dest`` (``None`` if there is no sidecar)."""
    try:
        return json.loads(sidecar_path(dest).read_text())["checksum"]
    except (OSError, ValueError, KeyError):
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
) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``.

    ``checksum`` is ``"md5:<hex>"``, ``"sha256:<hex>"`` or ``None`` (then the SHA-256 is
    computed, logged with a warning and recorded in the sidecar). An existing ``dest`` that
    verifies is kept without downloading; one that does not is replaced. ``url`` may also be
    a ``file://`` URL or a local path (the file is copied). Raises :class:`DownloadError`.
    """
    dest = Path(dest)
    if checksum is not None:
        parse_checksum(checksum)  # reject a malformed pin before any transfer
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    if dest.is_file():
        try:
            got = _verify(dest, checksum, url)
        except DownloadError as exc:
            log.warning("%s exists but does not verify (%s); downloading again", dest, exc)
            dest.unlink()
        else:
            log.info("%s already present and verified (%s)", dest, got)
            _write_sidecar(dest, url, got, pinned=checksum is not None)
            return dest

    local = _local_source(url)
    if local is not None:
        _copy_local(local, part, url, progress)
    else:
        _download_with_retries(url, part, retries, backoff, timeout, progress)

    try:
        got = _verify(part, checksum, url)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    _write_sidecar(dest, url, got, pinned=checksum is not None)
    return dest


def _write_sidecar(dest: Path, url: str, checksum: str, pinned: bool) -> None:
    write_json(sidecar_path(dest), {
        "url": url, "file": dest.name, "bytes": dest.stat().st_size,
        "checksum": checksum, "pinned": pinned,
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


def _download_with_retries(url: str, part: Path, retries: int, backoff: float,
                           timeout: float, progress: bool) -> None:
    attempt = 0
    with requests.Session() as session:
        while True:
            try:
                _download_once(session, url, part, timeout, progress)
                return
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


def _download_once(session: requests.Session, url: str, part: Path, timeout: float,
                   progress: bool) -> None:
    """One HTTP request; appends to ``part`` when the server honours the Range header."""
    offset = part.stat().st_size if part.exists() else 0
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
            # Nothing left to send: the partial file is complete, unless the server says the
            # file is shorter than what we hold (then start again). The checksum decides.
            match = re.match(r"bytes\s+\*/(\d+)", response.headers.get("Content-Range", ""))
            if match and int(match.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"partial file has {offset} bytes but the remote file has "
                                 f"{match.group(1)}; restarting")
            log.info("%s: server reports %s already complete (%d bytes)", url, part.name, offset)
            return
        if status in _RETRY_STATUS or 500 <= status < 600:
            raise _Transient(f"HTTP {status}", _retry_after(response))
        if status == 206 and offset:
            start, total = _content_range(response)
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"server resumed at byte {start}, expected {offset}; restarting")
            mode = "ab"
        elif status == 200:
            if offset:
                log.info("%s: server ignored the Range request; restarting from zero", url)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise DownloadError(f"{url}: HTTP {status} {response.reason or ''}".rstrip())

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
            raise _Transient(f"connection closed at byte {written} of {total}")


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
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DownloadError(f"{archive}: corrupt or unreadable archive ({type(exc).__name__}: {exc})") from exc
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
        for member in tar:  # streams: every member is checked before it is written
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


def fetch_options(cfg: dict) -> dict:
    """Optional ``retries`` / ``backoff`` / ``timeout`` keys of a source cfg, for :func:`fetch`."""
    return {k: cfg[k] for k in ("retries", "backoff", "timeout") if cfg.get(k) is not None}


def extract_once(archive: Path, target: Path) -> None:
    """Extract unless ``target`` already holds an extraction of this very archive."""
    marker = Path(target) / ".extracted-from"
    stamp = f"{Path(archive).name} {recorded_checksum(archive)}"
    if marker.is_file() and marker.read_text() == stamp:
        return
    extract(archive, target)
    marker.write_text(stamp)
