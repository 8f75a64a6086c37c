"""Embedded procedural binaural noise: layout, kinds, binaural coherence, determinism, cfg errors."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import soundfile as sf

from fake_corpus import generate_with_one_and_two_workers, tree_files
from kboost.audio import read_audio
from kboost.sources import embedded_noise, embedded_speech, espeak
from kboost.sources.layout import SPLITS, read_index

CFG = {
    "clips": {"train": 4, "val": 2, "test": 2},
    "seconds": 2.0,
    "kinds": ["coloured", "speech_shaped", "babble", "nonstationary"],
    "coherence_range": [0.2, 0.8],
    "babble_talkers": [2, 3],
    "babble_speakers_per_split": 3,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return generate_with_one_and_two_workers(embedded_noise.generate, CFG, 11, tmp_path_factory, "noise")


def test_layout_and_audio(runs):
    root = runs[0]
    frame = read_index("noise", root, check_files=True)
    assert len(frame) == 8
    assert frame.groupby("split").size().to_dict() == {"test": 2, "train": 4, "val": 2}
    assert set(frame.loc[frame["split"] == "train", "kind"]) == set(CFG["kinds"])
    for row in frame.itertuples():
        assert row.path == f"{row.split}/{row.noise_id}.flac"
        info = sf.info(str(root / row.path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 2, "PCM_16")
        audio = read_audio(root / row.path, sample_rate=16000, channels=2)
        assert audio.shape == (2, 32000) and row.seconds == pytest.approx(2.0)
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0.05
        assert not np.array_equal(audio[0], audio[1])
        rms_db = 20 * np.log10(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
        assert -26.0 < rms_db < -24.0
    assert json.loads((root / "source.json").read_text())["kind"] == "embedded-procedural"


def test_interaural_coherence_matches_draw(runs):
    root = runs[0]
    clips = json.loads((root / "source.json").read_text())["clips"]
    for noise_id, params in clips.items():
        if params["kind"] == "nonstationary":
            continue  # the envelope changes the estimate
        split = noise_id.split("_")[0]
        left, right = read_audio(root / f"{split}/{noise_id}.flac", 16000, 2).astype(np.float64)
        d = params["itd_samples"]
        pair = (left[:-d], right[d:]) if d > 0 else (left[-d:], right[:d]) if d < 0 else (left, right)
        assert np.corrcoef(*pair)[0, 1] == pytest.approx(params["coherence"], abs=0.12)
        assert 0.2 <= params["coherence"] <= 0.8


def test_babble_speakers_disjoint_from_speech_and_across_splits(runs):
    source = json.loads((runs[0] / "source.json").read_text())
    ids = {s: {t["speaker_id"] for t in source["babble_speakers"][s]} for s in SPLITS}
    assert all(i.startswith("bab") for s in SPLITS for i in ids[s])
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    speech_variants = {"m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f4", "klatt2", "klatt3"}
    assert not speech_variants & set(embedded_noise.DEFAULTS["babble_variants"])
    for clip in source["clips"].values():
        if clip["kind"] == "babble":
            split_ids = set().union(*ids.values())
            assert set(clip["talkers"]) <= split_ids and 2 <= len(clip["talkers"]) <= 3


def test_byte_identical_across_runs_and_workers(runs):
    a, b = tree_files(runs[0]), tree_files(runs[1])
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_splits_use_disjoint_streams(tmp_path):
    cfg = {**CFG, "clips": {"train": 1, "val": 1, "test": 1}, "kinds": ["coloured"]}
    embedded_noise.generate(tmp_path, cfg, seed=3)
    audio = [read_audio(tmp_path / f"{s}/{s}_00000.flac", 16000, 2) for s in SPLITS]
    assert not np.array_equal(audio[0], audio[1]) and not np.array_equal(audio[1], audio[2])


@pytest.mark.parametrize("key, value, message", [
    ("clips", {"train": 1, "val": 1}, r"embedded\.noise\.clips"),
    ("clips", {"train": 1, "val": 0, "test": 1}, r"embedded\.noise\.clips\.val must be >= 1"),
    ("seconds", 0, r"embedded\.noise\.seconds"),
    ("seconds", "6", r"embedded\.noise\.seconds must be a number"),
    ("kinds", ["pink"], r"embedded\.noise\.kinds: unknown kind"),
    ("kinds", [], r"embedded\.noise\.kinds"),
    ("coherence_range", [0.5, 1.5], r"embedded\.noise\.coherence_range"),
    ("coherence_range", [0.9, 0.1], r"embedded\.noise\.coherence_range"),
    ("babble_variants", ["whisper"], "not reproducible"),
])
def test_bad_cfg(tmp_path, key, value, message):
    cfg = copy.deepcopy(CFG)
    cfg[key] = value
    with pytest.raises(ValueError, match=message):
        embedded_noise.generate(tmp_path, cfg, seed=1)


def test_missing_and_unknown_keys(tmp_path):
    cfg = copy.deepcopy(CFG)
    del cfg["seconds"]
    with pytest.raises(ValueError, match=r"embedded\.noise\.seconds is missing"):
        embedded_noise.generate(tmp_path, cfg, seed=1)
    with pytest.raises(ValueError, match="unknown key"):
        embedded_noise.generate(tmp_path, {**CFG, "colour": 1}, seed=1)


def test_refused_babble_voice_is_a_clear_error(tmp_path):
    cfg = {**CFG, "kinds": ["babble"], "babble_voices": ["en-gb"], "clips": {"train": 1, "val": 1, "test": 1}}
    with pytest.raises(RuntimeError, match="en-gb"):
        embedded_noise.generate(tmp_path, cfg, seed=1)


def test_level_helper():
    x = np.random.default_rng(0).standard_normal((2, 1000))
    y = embedded_speech.normalise_level(x)
    assert y.dtype == np.float32
    assert 20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2))) == pytest.approx(-25.0, abs=0.01)
    spiky = np.zeros(1000)
    spiky[10] = 1.0
    assert np.abs(embedded_speech.normalise_level(spiky)).max() <= embedded_speech.PEAK_LIMIT + 1e-6
    assert espeak.version()
