"""Embedded binaural responses: layout, split disjointness, binaural cues, determinism, cfg errors."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from fake_corpus import tree_files
from kboost.audio import read_audio
from kboost.sources import embedded_rooms, layout
from kboost.sources.measured_responses import direction_split

# 90-degree bins centred on 0, 90, 180, 270: train = left [45, 135), test = right [225, 315),
# val = front and back. Lets the binaural-cue test know which side every train/test source is on.
TINY = {
    "rooms": {"train": 2, "val": 1, "test": 1},
    "directions_per_room": 3,
    "room_size_range": [[3.0, 3.0, 2.4], [6.0, 5.0, 3.0]],
    "rt60_range": [0.2, 0.5],
    "distance_range": [0.8, 1.5],
    "max_order": 2,
    "anechoic_directions": {"train": 4, "val": 2, "test": 2},
    "response_seconds": 0.1,
    "azimuth_bin_deg": 90,
    "azimuth_bin_pattern": ["val", "train", "val", "test"],
}
DEFAULT_BINS = {k: v for k, v in TINY.items() if k not in ("azimuth_bin_deg", "azimuth_bin_pattern")}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("responses")
    embedded_rooms.generate(out, TINY, seed=7, workers=1)
    return out


def test_layout_and_audio(generated):
    frame = layout.read_index("responses", generated, check_files=True)
    assert set(frame["set"]) == {"simulated_room", "anechoic_hrtf"}
    sim = frame[frame["set"] == "simulated_room"]
    assert sim.groupby("split").size().to_dict() == {"train": 6, "val": 3, "test": 3}
    ane = frame[frame["set"] == "anechoic_hrtf"]
    assert ane.groupby("split").size().to_dict() == {"train": 4, "val": 2, "test": 2}
    assert (frame["elevation_deg"].abs() <= 10 + 1e-6).all()
    assert sim["distance_m"].between(0.8, 1.5).all()
    assert np.allclose(ane["distance_m"], 1.4)
    for rel in frame["path"]:
        audio = read_audio(generated / rel, sample_rate=16000, channels=2)
        assert np.all(np.isfinite(audio))
        assert np.max(np.abs(audio)) == pytest.approx(1.0, abs=1e-6)  # documented normalisation
        assert audio.shape[1] <= 1600
    source = json.loads((generated / "source.json").read_text())
    assert source["kind"] == "embedded_rooms" and source["seed"] == 7
    assert source["sofa"]["sha256"] == "2768ac841213a7ae11d1ea7fd0f25a69b39216102dc5dd913ea6ba0f0dc57e28"
    assert "Gardner" in source["attribution"]


def test_rooms_and_directions_disjoint(generated):
    frame = layout.read_index("responses", generated)
    assert (frame.groupby("room_id")["split"].nunique() == 1).all()
    for _, row in frame.iterrows():
        assert direction_split(row["azimuth_deg"], 90, TINY["azimuth_bin_pattern"]) == row["split"]
    # with the default 5-degree bins as well
    bins = {}
    for split in layout.SPLITS:
        bins[split] = {int(np.floor(a / 5 + 0.5)) % 72
                       for a in frame.loc[frame["split"] == split, "azimuth_deg"]}
    assert not (bins["train"] & bins["val"]) and not (bins["train"] & bins["test"])
    assert not (bins["val"] & bins["test"])


def _cues(audio: np.ndarray) -> tuple[float, int]:
    """(left/right energy ratio in dB, lag of right behind left in samples) around the onset."""
    onset = int(np.argmax(np.max(np.abs(audio), axis=0) > 0.3))
    lo, hi = max(0, onset - 16), onset + 32
    left, right = audio[0, lo:hi].astype(np.float64), audio[1, lo:hi].astype(np.float64)
    ild = 10 * np.log10(np.sum(left ** 2) / np.sum(right ** 2))
    lags = np.arange(-16, 17)
    xc = [np.dot(left[max(0, -k):len(left) - max(0, k)], right[max(0, k):len(right) - max(0, -k)]) for k in lags]
    return ild, int(lags[int(np.argmax(xc))])


def test_binaural_cues_follow_side(generated):
    frame = layout.read_index("responses", generated)
    checked = 0
    for _, row in frame.iterrows():
        if row["split"] == "val":
            continue
        ild, lag = _cues(read_audio(generated / row["path"]))
        if row["split"] == "train":   # source on the left (azimuth 45..135)
            assert ild > 3 and lag > 0, (row["response_id"], ild, lag)
        else:                          # source on the right (azimuth 225..315)
            assert ild < -3 and lag < 0, (row["response_id"], ild, lag)
        checked += 1
    assert checked == 15


def test_deterministic_across_runs_and_workers(generated, tmp_path):
    again = tmp_path / "again"
    again.mkdir()
    embedded_rooms.generate(again, TINY, seed=7, workers=2)
    assert tree_files(again) == tree_files(generated)
    other = tmp_path / "other_seed"
    other.mkdir()
    embedded_rooms.generate(other, TINY, seed=8, workers=1)
    assert tree_files(other)["index.csv"] != tree_files(generated)["index.csv"]


def test_default_bins_run(tmp_path):
    cfg = dict(DEFAULT_BINS, rooms={"train": 1, "val": 1, "test": 1}, directions_per_room=2,
               anechoic_directions={"train": 2, "val": 1, "test": 1})
    embedded_rooms.generate(tmp_path, cfg, seed=1)
    frame = layout.read_index("responses", tmp_path, check_files=True)
    pattern = embedded_rooms.DEFAULTS["azimuth_bin_pattern"]
    assert all(direction_split(a, 5, pattern) == s for a, s in zip(frame["azimuth_deg"], frame["split"]))


@pytest.mark.parametrize("change, key", [
    ({"max_order": None}, "max_order"),            # None = remove the key
    ({"max_order": -1}, "max_order"),
    ({"max_order": 2.5}, "max_order"),
    ({"rooms": {"train": 1, "val": 1}}, "rooms"),
    ({"rooms": {"train": -1, "val": 1, "test": 1}}, "rooms"),
    ({"room_size_range": [[3, 3], [5, 5]]}, "room_size_range"),
    ({"room_size_range": [[6, 6, 3], [3, 3, 2.4]]}, "room_size_range"),
    ({"rt60_range": [0.5, 0.2]}, "rt60_range"),
    ({"distance_range": [0, 1]}, "distance_range"),
    ({"distance_range": [2.0, 3.0]}, "distance_range"),   # cannot fit a 3 m room
    ({"response_seconds": 0}, "response_seconds"),
    ({"anechoic_directions": {"train": 500, "val": 1, "test": 1}}, "anechoic_directions"),
    ({"azimuth_bin_pattern": ["train", "val"]}, "azimuth_bin_pattern"),
    ({"azimuth_bin_deg": 7}, "azimuth_bin_deg"),
    ({"unexpected": 1}, "unexpected"),
])
def test_bad_cfg(tmp_path, change, key):
    cfg = copy.deepcopy(TINY)
    for k, v in change.items():
        if v is None:
            del cfg[k]
        else:
            cfg[k] = v
    with pytest.raises(ValueError, match=key):
        embedded_rooms.generate(tmp_path, cfg, seed=0)
