"""The on-disk corpus layout that every data source produces.

Downstream code (mixture synthesis) only ever reads this layout, so it does not care whether
the audio came from LibriSpeech / WHAM! / measured rooms or from the embedded generators.

A corpus part is a directory with an ``index.csv`` and the audio files it names::

    data/corpus/speech/index.csv      utt_id, speaker_id, split, path, seconds, text
                       <audio files>  mono, 16 kHz
    data/corpus/noise/index.csv       noise_id, split, kind, path, seconds
                       <audio files>  2 channels (left, right), 16 kHz
    data/corpus/responses/index.csv   response_id, split, set, room_id, azimuth_deg,
                                      elevation_deg, distance_m, path
                       <audio files>  2 channels (left, right), 16 kHz, float WAV

``path`` is relative to the part's directory and uses forward slashes. Directions follow the
SOFA convention: azimuth in degrees counter-clockwise from the front (90 = left), elevation
in degrees above the horizontal plane. ``split`` is one of ``SPLITS``. Each part also holds a
``source.json`` describing where it came from (provenance, not read by the pipeline).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..errors import KboostError

SPLITS = ("train", "val", "test")
SAMPLE_RATE = 16000

COLUMNS = {
    "speech": ["utt_id", "speaker_id", "split", "path", "seconds", "text"],
    "noise": ["noise_id", "split", "kind", "path", "seconds"],
    "responses": [
        "response_id", "split", "set", "room_id",
        "azimuth_deg", "elevation_deg", "distance_m", "path",
    ],
}
ID_COLUMN = {"speech": "utt_id", "noise": "noise_id", "responses": "response_id"}
CHANNELS = {"speech": 1, "noise": 2, "responses": 2}
INDEX_NAME = "index.csv"


class CorpusError(KboostError, ValueError):
    """A corpus part that does not follow the layout."""


def write_index(part: str, directory: str | os.PathLike, rows: list[dict] | pd.DataFrame) -> Path:
    """Validate and write ``index.csv`` for ``part`` ('speech', 'noise' or 'responses').

    Rows are sorted by split then id so the file's bytes do not depend on processing order.
    """
    directory = Path(directory)
    frame = pd.DataFrame(rows)
    missing = [c for c in COLUMNS[part] if c not in frame.columns]
    if missing:
        raise CorpusError(f"{part} index for {directory}: missing columns {missing}")
    frame = frame[COLUMNS[part]]
    _validate(part, frame, directory)
    frame = frame.sort_values(["split", ID_COLUMN[part]], kind="stable").reset_index(drop=True)
    path = directory / INDEX_NAME
    frame.to_csv(path, index=False, float_format="%.6g", lineterminator="\n")
    return path


def read_index(part: str, directory: str | os.PathLike, check_files: bool = False) -> pd.DataFrame:
    """Read and validate a part's index; ``check_files`` also checks that every file exists."""
    directory = Path(directory)
    path = directory / INDEX_NAME
    if not path.is_file():
        raise CorpusError(f"{path}: no {part} index; run the stage that prepares data/corpus/{part}")
    # Ids stay strings: "003" must not become 3.
    text_columns = {ID_COLUMN[part]: str, "speaker_id": str, "room_id": str, "path": str, "text": str}
    frame = pd.read_csv(path, keep_default_na=False, dtype={c: t for c, t in text_columns.items() if c in COLUMNS[part]})
    missing = [c for c in COLUMNS[part] if c not in frame.columns]
    if missing:
        raise CorpusError(f"{path}: missing columns {missing}")
    _validate(part, frame, directory)
    if check_files:
        absent = [p for p in frame["path"] if not (directory / p).is_file()]
        if absent:
            raise CorpusError(f"{path}: {len(absent)} listed file(s) missing, e.g. {absent[0]}")
    return frame


def _validate(part: str, frame: pd.DataFrame, directory: Path) -> None:
    where = f"{part} index in {directory}"
    if frame.empty:
        raise CorpusError(f"{where}: no rows")
    bad_split = sorted(set(frame["split"]) - set(SPLITS))
    if bad_split:
        raise CorpusError(f"{where}: unknown split(s) {bad_split}; allowed {list(SPLITS)}")
    ids = frame[ID_COLUMN[part]]
    if ids.duplicated().any():
        raise CorpusError(f"{where}: duplicate id {ids[ids.duplicated()].iloc[0]!r}")
    if part == "speech":
        # Speakers must not cross splits, or test results would flatter the models.
        per_speaker = frame.groupby("speaker_id")["split"].nunique()
        shared = per_speaker[per_speaker > 1]
        if len(shared):
            raise CorpusError(f"{where}: speaker {shared.index[0]!r} appears in more than one split")
    if part == "responses":
        per_room = frame.groupby(["set", "room_id"])["split"].nunique()
        shared = per_room[per_room > 1]
        if len(shared):
            raise CorpusError(f"{where}: room {shared.index[0]!r} appears in more than one split")


def split_caps(value) -> dict[str, int]:
    """A per-split cap from cfg: None (no cap), one int for every split, or {split: int|None}."""
    if value is None:
        return {}
    if isinstance(value, int):
        return {s: value for s in SPLITS}
    return {s: int(v) for s, v in dict(value).items() if v is not None}


def stable_subset(items: list, count: int, key) -> list:
    """``count`` items chosen by a hash of ``key(item)`` (a string id): deterministic, spread
    evenly over speakers or folders, returned in id order."""
    import hashlib

    ranked = sorted(items, key=lambda item: hashlib.sha256(key(item).encode()).hexdigest())
    return sorted(ranked[:count], key=key)
