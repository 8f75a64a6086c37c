"""WHAM! noise (wham_noise.zip) -> the noise part of the corpus layout.

The archive holds ``wham_noise/{tr,cv,tt}/*.wav`` (two-channel binaural recordings made in
cafes, restaurants and bars; 16 kHz float WAV in the public release) and a ``metadata/``
folder that is not needed here. Every file is checked (two channels, readable, finite, not
silent), resampled to 16 kHz if it is at another rate, and written as 2-channel 16-bit FLAC at
``<split>/<noise_id>.flac`` with ``noise_id = <wham split>_<file stem>`` and kind ``wham``.

cfg keys: ``url``, ``checksum`` ("md5:<hex>" / "sha256:<hex>" / null: no published checksum,
the computed SHA-256 is recorded in source.json), optional ``retries`` / ``backoff`` /
``timeout`` (passed to fetch), ``splits`` ({split: tr|cv|tt}),
``max_files`` (int or {split: int}: deterministic subset), ``keep_extracted``.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ..audio import read_audio, write_audio
from ..download import DownloadError, extract_once, fetch, fetch_options, recorded_checksum
from ..fsutil import atomic_dir, write_json
from ..parallel import map_ordered
from .layout import CHANNELS, SAMPLE_RATE, SPLITS, CorpusError, split_caps, stable_subset, write_index

log = logging.getLogger(__name__)

DEFAULT_SPLITS = {"train": "tr", "val": "cv", "test": "tt"}
KIND = "wham"
PEAK = 0.999  # 16-bit FLAC cannot hold |x| >= 1; louder files are scaled down (level is set later by SNR)


def prepare(
    out_dir: str | os.PathLike,
    cfg: dict,
    downloads_dir: str | os.PathLike,
    workers: int = 1,
    max_files: dict | int | None = None,
    progress: bool = True,
) -> None:
    """Download, verify, extract and convert WHAM! noise into the noise layout at ``out_dir``.

    ``max_files`` overrides ``cfg["max_files"]``. ``out_dir`` appears only on success.
    """
    out_dir, downloads_dir = Path(out_dir), Path(downloads_dir)
    url = str(cfg["url"])
    splits = {s: str(v) for s, v in (cfg.get("splits") or DEFAULT_SPLITS).items()}
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise CorpusError(f"wham cfg: unknown split(s) {unknown}; allowed {list(SPLITS)}")
    caps = split_caps(max_files if max_files is not None else cfg.get("max_files"))

    name = Path(urlparse(url).path).name or "wham_noise.zip"
    archive = fetch(url, downloads_dir / name, cfg.get("checksum"), progress=progress,
                    **fetch_options(cfg, downloads_dir))
    extracted = downloads_dir / f"{Path(name).stem}.extracted"
    extract_once(archive, extracted)
    root = _noise_root(extracted)
    if root is None:
        raise DownloadError(f"{archive}: expected wham_noise/{{tr,cv,tt}}/ inside the archive")

    jobs: list[tuple[str, str, Path]] = []  # (split, noise_id, source)
    for split, folder in splits.items():
        directory = root / folder
        files = sorted(directory.glob("*.wav")) if directory.is_dir() else []
        if not files:
            raise CorpusError(f"{directory}: no .wav files for split {split!r}")
        items = [(split, f"{folder}_{f.stem}", f) for f in files]
        cap = caps.get(split)
        if cap is not None and len(items) > cap:
            items = stable_subset(items, cap, key=lambda j: j[1])
        jobs.extend(items)

    with atomic_dir(out_dir) as tmp:
        def convert(job: tuple[str, str, Path]) -> dict:
            split, noise_id, source = job
            audio = read_audio(source, sample_rate=SAMPLE_RATE, channels=CHANNELS["noise"], resample=True)
            peak = float(np.max(np.abs(audio)))
            if peak >= 1.0:
                audio = audio * np.float32(PEAK / peak)
            rel = f"{split}/{noise_id}.flac"
            write_audio(tmp / rel, audio, SAMPLE_RATE)
            return {"noise_id": noise_id, "split": split, "kind": KIND, "path": rel,
                    "seconds": round(audio.shape[-1] / SAMPLE_RATE, 6)}

        rows = map_ordered(convert, jobs, workers, desc="convert WHAM!", unit="file", threads=True, progress=progress)
        write_index("noise", tmp, rows)
        write_json(tmp / "source.json", {
            "source": "wham_noise",
            "homepage": "https://wham.whisper.ai/",
            "url": url,
            "checksum": recorded_checksum(archive),
            "checksum_pinned": cfg.get("checksum") is not None,
            "splits": splits,
            "max_files": caps or None,
            "files": {s: sum(r["split"] == s for r in rows) for s in splits},
            "seconds": {s: round(sum(r["seconds"] for r in rows if r["split"] == s), 3) for s in splits},
        })

    if not cfg.get("keep_extracted", False):
        shutil.rmtree(extracted, ignore_errors=True)


def _noise_root(extracted: Path) -> Path | None:
    for candidate in (extracted / "wham_noise", extracted):
        if any((candidate / d).is_dir() for d in DEFAULT_SPLITS.values()):
            return candidate
    return None


