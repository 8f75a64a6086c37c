"""Atomic publication of files and directories.

Every stage writes to a temporary sibling and renames it into place only when it is
complete, so a killed or failed stage never leaves a half-written output that DVC
could cache or a later stage could read.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``target`` on success.

    On any exception the temporary directory is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists() or target.is_symlink():
        os.replace(target, old)
    os.replace(tmp, target)
    _remove(old)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``, with its extension (soundfile picks the format
    from it); rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.tmp-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as sorted, indented JSON atomically (stable bytes for git and DVC)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_temporaries(target: str | os.PathLike) -> None:
    """Delete what a killed write of ``target`` left next to it: ``atomic_file``'s
    ``.<stem>.tmp-*<suffix>``, ``atomic_dir``'s ``.<name>.tmp-*`` and ``.<name>.old-*``."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for child in target.parent.iterdir():
        name = child.name
        if (name.startswith((f".{target.name}.tmp-", f".{target.name}.old-"))
                or (name.startswith(f".{target.stem}.tmp-") and name.endswith(target.suffix))):
            _remove(child)


def remove_temporaries_in(folder: str | os.PathLike) -> list[Path]:
    """Delete every temporary a killed ``atomic_file`` / ``atomic_dir`` left in ``folder``
    (hidden ``.*.tmp-*`` / ``.*.old-*`` entries); return what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [child for child in folder.iterdir()
               if child.name.startswith(".") and (".tmp-" in child.name or ".old-" in child.name)]
    for child in removed:
        _remove(child)
    return removed
