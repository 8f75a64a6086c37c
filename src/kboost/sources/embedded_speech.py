"""Embedded (offline) speech corpus: multi-speaker English synthesised with espeak-ng.

Writes corpus part "speech" (see :mod:`kboost.sources.layout`): mono 16 kHz FLAC (PCM_16) at
``<split>/<speaker_id>/<utt_id>.flac``, ``index.csv`` and ``source.json``.

cfg keys (``embedded.speech`` in params.yaml):

- ``speakers``: ``{train: int, val: int, test: int}`` speakers per split (each >= 1). One pool
  of distinct (voice, variant, pitch, rate) speakers is drawn and partitioned, so no speaker
  (and no such tuple) appears in two splits.
- ``utterances_per_speaker``: int >= 2 (target speech extraction enrols a speaker with a
  different utterance from the one it extracts).
- ``sentences_per_utterance``: int >= 1; sentences from ``assets/sentences.txt`` joined into
  one utterance (2 gives about 5-8 s at 140-190 words/min).
- ``voices``: espeak voice names (e.g. "en", "en-us", "en-GB-x-rp"; not "en-gb").
- ``variants``: espeak variants (files of espeak-ng-data/voices/!v, e.g. "m3", "f1"; "" for
  the voice's default). Breath variants are refused (not reproducible).
- ``pitch_range``: ``[lo, hi]`` espeak pitch base, 0-99 inclusive.
- ``rate_range``: ``[lo, hi]`` words per minute, 80-450 inclusive.

The sentence list is partitioned into disjoint train / val / test subsets (sizes in proportion
to each split's speaker count). Each utterance is normalised to ``TARGET_RMS_DBFS`` with its
peak limited to ``PEAK_LIMIT``. Everything is drawn from ``seed`` through numpy SeedSequences
keyed by speaker, so the files are byte-identical across runs and for any ``workers``.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..audio import write_audio
from ..fsutil import file_digest, write_json
from ..parallel import map_ordered
from . import espeak
from .layout import SAMPLE_RATE, SPLITS, write_index

TARGET_RMS_DBFS = -25.0
PEAK_LIMIT = 0.95  # |sample| after normalisation; louder utterances are scaled down
SENTENCES_PATH = Path(__file__).resolve().parent.parent / "assets" / "sentences.txt"
SPEAKER_PREFIX = "spk"
_STREAM_SPEAKERS, _STREAM_SENTENCES, _STREAM_UTTERANCES = 101, 102, 103
_KEY = "embedded.speech"


def load_sentences(path: Path = SENTENCES_PATH) -> list[str]:
    """The sentence list (one per line, blank lines ignored), in file order."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    sentences = [line for line in lines if line]
    if len(set(sentences)) != len(sentences):
        raise ValueError(f"{path}: duplicate sentences")
    return sentences


def normalise_level(audio: np.ndarray, rms_dbfs: float = TARGET_RMS_DBFS, peak: float = PEAK_LIMIT) -> np.ndarray:
    """Scale to ``rms_dbfs`` (RMS over all samples and channels), then scale down if the peak
    exceeds ``peak``. Returns float32."""
    audio = np.asarray(audio, dtype=np.float64)
    rms = float(np.sqrt(np.mean(audio**2)))
    if rms <= 0:
        raise ValueError("cannot normalise a silent signal")
    audio = audio * (10 ** (rms_dbfs / 20) / rms)
    top = float(np.max(np.abs(audio)))
    if top > peak:
        audio = audio * (peak / top)
    return audio.astype(np.float32)


def _int(cfg: dict, key: str, minimum: int, where: str = _KEY) -> int:
    if key not in cfg:
        raise ValueError(f"{where}.{key} is missing")
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where}.{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where}.{key} must be >= {minimum}, got {value}")
    return int(value)


def _int_range(cfg: dict, key: str, lo: int, hi: int, where: str = _KEY) -> tuple[int, int]:
    value = cfg.get(key)
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{where}.{key} must be a list [lo, hi] of two integers, got {value!r}")
    a, b = int(value[0]), int(value[1])
    if not lo <= a <= b <= hi:
        raise ValueError(f"{where}.{key} must satisfy {lo} <= lo <= hi <= {hi}, got {list(value)}")
    return a, b


def _str_list(cfg: dict, key: str, where: str = _KEY, allow_empty_item: bool = False) -> list[str]:
    value = cfg.get(key)
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}.{key} must be a non-empty list of strings, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where}.{key} contains duplicates: {list(value)}")
    if not allow_empty_item and any(not v for v in value):
        raise ValueError(f"{where}.{key} contains an empty name")
    return list(value)


def _per_split(cfg: dict, key: str, where: str) -> dict[str, int]:
    value = cfg.get(key)
    if not isinstance(value, dict) or set(value) != set(SPLITS):
        raise ValueError(f"{where}.{key} must map exactly {list(SPLITS)} to integers, got {value!r}")
    return {split: _int(value, split, 1, f"{where}.{key}") for split in SPLITS}


def validate_cfg(cfg: dict) -> dict:
    """Check ``cfg`` and return a normalised copy; ValueError names the offending key."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{_KEY} must be a mapping, got {type(cfg).__name__}")
    known = {"speakers", "utterances_per_speaker", "sentences_per_utterance", "voices", "variants",
             "pitch_range", "rate_range"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{_KEY}: unknown key(s) {unknown}; expected {sorted(known)}")
    out = {
        "speakers": _per_split(cfg, "speakers", _KEY),
        "utterances_per_speaker": _int(cfg, "utterances_per_speaker", 2),
        "sentences_per_utterance": _int(cfg, "sentences_per_utterance", 1),
        "voices": _str_list(cfg, "voices"),
        "variants": _str_list(cfg, "variants", allow_empty_item=True),
        "pitch_range": list(_int_range(cfg, "pitch_range", 0, 99)),
        "rate_range": list(_int_range(cfg, "rate_range", 80, 450)),
    }
    espeak.check_variants(out["variants"], f"{_KEY}.variants")
    return out


def partition_sentences(sentences: list[str], weights: dict[str, int], seed: int, minimum: int) -> dict[str, list[str]]:
    """Disjoint, deterministic sentence subsets per split, sized in proportion to ``weights``
    (each at least ``minimum``)."""
    n = len(sentences)
    total = sum(weights.values())
    sizes = {s: max(minimum, int(n * weights[s] / total)) for s in SPLITS}
    sizes["train"] = n - sizes["val"] - sizes["test"]
    if sizes["train"] < minimum:
        raise ValueError(
            f"{len(sentences)} sentences are too few to give every split {minimum} distinct sentences"
        )
    order = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM_SENTENCES])).permutation(n)
    subsets, start = {}, 0
    for split in SPLITS:
        idx = sorted(int(i) for i in order[start:start + sizes[split]])
        subsets[split] = [sentences[i] for i in idx]
        start += sizes[split]
    return subsets


def _speaker_task(task: tuple) -> list[dict]:
    """Synthesise and write one speaker's utterances; returns their index rows."""
    out_dir, split, index, speaker, sentences, n_utts, n_sent, seed = task
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM_UTTERANCES, int(index)]))
    rows = []
    for u in range(n_utts):
        picks = rng.choice(len(sentences), size=n_sent, replace=False)
        text = " ".join(sentences[int(i)] for i in picks)
        audio = normalise_level(espeak.synthesize(speaker, text, SAMPLE_RATE))
        utt_id = f"{speaker.speaker_id}_{u:03d}"
        rel = f"{split}/{speaker.speaker_id}/{utt_id}.flac"
        write_audio(Path(out_dir) / rel, audio, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"utt_id": utt_id, "speaker_id": speaker.speaker_id, "split": split, "path": rel,
                     "seconds": round(audio.shape[-1] / SAMPLE_RATE, 6), "text": text})
    return rows


def generate(out_dir: Path, cfg: dict, seed: int, workers: int = 1) -> None:
    """Write the embedded speech corpus into ``out_dir`` (existing, empty; the caller publishes
    it atomically). See the module docstring for ``cfg``."""
    cfg = validate_cfg(cfg)
    out_dir = Path(out_dir)
    sentences = load_sentences()
    subsets = partition_sentences(sentences, cfg["speakers"], seed, minimum=cfg["sentences_per_utterance"])
    total = sum(cfg["speakers"].values())
    pool = espeak.speaker_pool(
        total, int(np.random.SeedSequence([int(seed), _STREAM_SPEAKERS]).generate_state(1)[0]),
        cfg["voices"], cfg["variants"], tuple(cfg["pitch_range"]), tuple(cfg["rate_range"]), SPEAKER_PREFIX,
    )
    tasks, start = [], 0
    for split in SPLITS:
        for index in range(start, start + cfg["speakers"][split]):
            tasks.append((str(out_dir), split, index, pool[index], subsets[split],
                          cfg["utterances_per_speaker"], cfg["sentences_per_utterance"], seed))
        start += cfg["speakers"][split]
    rows = [row for chunk in map_ordered(_speaker_task, tasks, workers, desc="speech", unit="speaker", chunksize=1) for row in chunk]
    write_index("speech", out_dir, rows)
    write_json(out_dir / "source.json", {
        "kind": "embedded-espeak",
        "cfg": cfg,
        "seed": int(seed),
        "espeak_ng_version": espeak.version(),
        "sentences_sha256": file_digest(SENTENCES_PATH),
        "sentences_per_split": {s: len(subsets[s]) for s in SPLITS},
        "target_rms_dbfs": TARGET_RMS_DBFS,
        "peak_limit": PEAK_LIMIT,
        "speakers": [dict(asdict(sp), split=task[1]) for sp, task in zip(pool, tasks)],
    })
