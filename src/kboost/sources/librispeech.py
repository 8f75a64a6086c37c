"""LibriSpeech (OpenSLR 12) -> the speech part of the corpus layout.

Each split comes from one LibriSpeech subset (``cfg["subsets"]``), downloaded as
``{mirror}/{subset}.tar.gz`` into ``downloads_dir`` (kept between runs so an interrupted
download resumes) and verified against ``cfg["md5"][subset]``. The archive holds
``LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac`` plus one
``<speaker>-<chapter>.trans.txt`` per chapter with lines ``<utt_id> <TEXT>``. The audio is
already mono 16 kHz FLAC, so it is checked and copied to ``<split>/<speaker>/<utt_id>.flac``.

cfg keys: ``mirror``, ``subsets`` ({split: subset}), ``md5`` ({subset: hex or null}),
optional ``min_seconds`` (drop shorter utterances), ``max_utterances`` (int or
{split: int}: a deterministic subset per split), ``keep_extracted`` (keep the unpacked
archive), ``retries`` / ``backoff`` / ``timeout`` (passed to fetch).
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from ..audio import AudioError
from ..download import DownloadError, extract_once, fetch, fetch_options, recorded_checksum
from ..fsutil import atomic_dir, write_json
from ..parallel import map_ordered
from .layout import SAMPLE_RATE, SPLITS, CorpusError, split_caps, stable_subset, write_index

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Utterance:
    utt_id: str
    speaker_id: str
    split: str
    source: Path
    text: str
    seconds: float = 0.0

    @property
    def rel_path(self) -> str:
        return f"{self.split}/{self.speaker_id}/{self.utt_id}.flac"


def archive_url(cfg: dict, subset: str) -> str:
    return f"{str(cfg['mirror']).rstrip('/')}/{subset}.tar.gz"


def prepare(
    out_dir: str | os.PathLike,
    cfg: dict,
    downloads_dir: str | os.PathLike,
    workers: int = 1,
    max_utterances: dict | int | None = None,
    min_seconds: float | None = None,
    progress: bool = True,
) -> None:
    """Download, verify, extract and convert LibriSpeech into the speech layout at ``out_dir``.

    ``max_utterances`` / ``min_seconds`` override the cfg keys of the same name. ``out_dir``
    appears only when everything succeeded (index.csv, source.json, audio).
    """
    out_dir, downloads_dir = Path(out_dir), Path(downloads_dir)
    subsets = _subsets(cfg)
    caps = split_caps(max_utterances if max_utterances is not None else cfg.get("max_utterances"))
    min_seconds = float(min_seconds if min_seconds is not None else cfg.get("min_seconds") or 0.0)
    md5s = cfg.get("md5") or {}

    archives: dict[str, dict] = {}
    trees: dict[str, Path] = {}
    for split, subset in subsets.items():
        url = archive_url(cfg, subset)
        pinned = md5s.get(subset)
        archive = fetch(url, downloads_dir / f"{subset}.tar.gz",
                        f"md5:{pinned}" if pinned else None, progress=progress,
                        **fetch_options(cfg, downloads_dir))
        archives[subset] = {"url": url, "checksum": recorded_checksum(archive), "split": split}
        trees[split] = _extracted_tree(archive, downloads_dir / f"{subset}.extracted", subset)

    utterances: list[Utterance] = []
    for split, subset in subsets.items():
        listed = _list_subset(trees[split], split)
        probed = map_ordered(_probe, listed, workers, desc=f"check {subset}", unit="file", threads=True, progress=progress)
        kept = [u for u in probed if u.seconds >= min_seconds]
        if len(kept) < len(probed):
            log.info("%s: dropped %d utterance(s) shorter than %.2f s", subset, len(probed) - len(kept), min_seconds)
        cap = caps.get(split)
        if cap is not None and len(kept) > cap:
            kept = stable_subset(kept, cap, key=lambda u: u.utt_id)
        if not kept:
            raise CorpusError(f"LibriSpeech {subset}: no utterances left for split {split!r}")
        utterances.extend(kept)

    with atomic_dir(out_dir) as tmp:
        def copy(utt: Utterance) -> None:
            dest = tmp / utt.rel_path
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(utt.source, dest)

        map_ordered(copy, utterances, workers, desc="copy speech", unit="file", threads=True, progress=progress)
        write_index("speech", tmp, [
            {"utt_id": u.utt_id, "speaker_id": u.speaker_id, "split": u.split,
             "path": u.rel_path, "seconds": round(u.seconds, 6), "text": u.text}
            for u in utterances
        ])
        counts = {s: sum(u.split == s for u in utterances) for s in subsets}
        write_json(tmp / "source.json", {
            "source": "librispeech",
            "homepage": "https://www.openslr.org/12/",
            "license": "CC BY 4.0",
            "mirror": cfg["mirror"],
            "subsets": dict(subsets),
            "archives": archives,
            "min_seconds": min_seconds,
            "max_utterances": caps or None,
            "utterances": counts,
            "speakers": {s: len({u.speaker_id for u in utterances if u.split == s}) for s in subsets},
        })

    if not cfg.get("keep_extracted", False):
        for tree in trees.values():
            shutil.rmtree(tree.parent.parent, ignore_errors=True)


def _subsets(cfg: dict) -> dict[str, str]:
    subsets = dict(cfg.get("subsets") or {})
    unknown = sorted(set(subsets) - set(SPLITS))
    if unknown or not subsets:
        raise CorpusError(f"librispeech cfg: 'subsets' must map splits {list(SPLITS)} to subsets, got {subsets}")
    return {s: str(subsets[s]) for s in SPLITS if s in subsets}


def _extracted_tree(archive: Path, target: Path, subset: str) -> Path:
    """Extract (unless an earlier run did) and return ``LibriSpeech/<subset>`` inside it."""
    tree = target / "LibriSpeech" / subset
    extract_once(archive, target)
    if not tree.is_dir():
        raise DownloadError(f"{archive}: expected LibriSpeech/{subset}/ inside the archive")
    return tree


def _list_subset(tree: Path, split: str) -> list[Utterance]:
    """Utterances of one extracted subset, from its transcripts (sorted by utterance id)."""
    found: list[Utterance] = []
    transcripts = sorted(tree.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise CorpusError(f"{tree}: no <speaker>/<chapter>/*.trans.txt transcripts found")
    listed: set[Path] = set()
    for trans in transcripts:
        speaker = trans.parent.parent.name
        for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            if not utt_id.startswith(f"{speaker}-") or not text:
                raise CorpusError(f"{trans}:{number}: expected '<speaker>-<chapter>-<n> TEXT', got {line!r}")
            audio = trans.parent / f"{utt_id}.flac"
            if not audio.is_file():
                raise CorpusError(f"{trans}:{number}: audio file {audio} is missing")
            listed.add(audio)
            found.append(Utterance(utt_id, speaker, split, audio, text.strip()))
    extra = sorted(set(tree.glob("*/*/*.flac")) - listed)
    if extra:
        log.warning("%s: %d FLAC file(s) without a transcript line ignored, e.g. %s", tree, len(extra), extra[0])
    return sorted(found, key=lambda u: u.utt_id)


def _probe(utt: Utterance) -> Utterance:
    """Check the file is mono 16 kHz and readable; fill in its duration."""
    try:
        info = sf.info(str(utt.source))
    except Exception as exc:  # soundfile raises several types; all mean "unreadable"
        raise AudioError(f"{utt.source}: cannot read audio ({exc})") from exc
    if info.samplerate != SAMPLE_RATE:
        raise AudioError(f"{utt.source}: expected sample rate {SAMPLE_RATE} Hz, found {info.samplerate} Hz")
    if info.channels != 1:
        raise AudioError(f"{utt.source}: expected 1 channel, found {info.channels}")
    if info.frames <= 0:
        raise AudioError(f"{utt.source}: audio is empty")
    return Utterance(utt.utt_id, utt.speaker_id, utt.split, utt.source, utt.text,
                     info.frames / info.samplerate)


