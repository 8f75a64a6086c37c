"""Embedded espeak speech corpus: layout, speaker/sentence disjointness, determinism, cfg errors."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import soundfile as sf

from fake_corpus import generate_with_one_and_two_workers, tree_files
from kboost.audio import read_audio
from kboost.sources import embedded_speech, espeak
from kboost.sources.layout import SPLITS, read_index

CFG = {
    "speakers": {"train": 3, "val": 1, "test": 1},
    "utterances_per_speaker": 2,
    "sentences_per_utterance": 1,
    "voices": ["en", "en-us", "en-GB-x-rp"],
    "variants": ["m1", "m3", "f1", "klatt2"],
    "pitch_range": [30, 70],
    "rate_range": [150, 190],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return generate_with_one_and_two_workers(embedded_speech.generate, CFG, 7, tmp_path_factory, "speech")


def test_layout_and_audio(runs):
    root = runs[0]
    frame = read_index("speech", root, check_files=True)
    assert len(frame) == 5 * 2
    assert set(frame["split"]) == set(SPLITS)
    for row in frame.itertuples():
        assert row.path == f"{row.split}/{row.speaker_id}/{row.utt_id}.flac"
        info = sf.info(str(root / row.path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        audio = read_audio(root / row.path, sample_rate=16000, channels=1)  # raises on NaN / silence
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0.05
        assert abs(row.seconds - audio.shape[-1] / 16000) < 1e-4
        assert 1.0 < row.seconds < 10.0
        rms_db = 20 * np.log10(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
        assert -27.0 < rms_db < -24.5
        assert row.text.strip()
    source = json.loads((root / "source.json").read_text())
    assert source["kind"] == "embedded-espeak" and source["seed"] == 7
    assert source["espeak_ng_version"]


def test_speakers_and_sentences_disjoint(runs):
    frame = read_index("speech", runs[0])
    assert (frame.groupby("speaker_id")["split"].nunique() == 1).all()
    assert (frame.groupby("speaker_id").size() >= 2).all()
    texts = {s: set(frame.loc[frame["split"] == s, "text"]) for s in SPLITS}
    assert not (texts["train"] & texts["val"]) and not (texts["train"] & texts["test"])
    assert not (texts["val"] & texts["test"])
    speakers = json.loads((runs[0] / "source.json").read_text())["speakers"]
    tuples = {(s["voice"], s["variant"], s["pitch"], s["rate"]) for s in speakers}
    assert len(tuples) == len(speakers) == 5


def test_byte_identical_across_runs_and_workers(runs):
    a, b = tree_files(runs[0]), tree_files(runs[1])
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_sentence_partition_disjoint_and_deterministic():
    sentences = embedded_speech.load_sentences()
    assert len(sentences) >= 600
    assert all(6 <= len(s.split()) <= 14 for s in sentences)
    p1 = embedded_speech.partition_sentences(sentences, {"train": 8, "val": 1, "test": 1}, 3, minimum=2)
    p2 = embedded_speech.partition_sentences(sentences, {"train": 8, "val": 1, "test": 1}, 3, minimum=2)
    assert p1 == p2
    assert sum(len(v) for v in p1.values()) == len(sentences)
    assert len(set().union(*map(set, p1.values()))) == len(sentences)


@pytest.mark.parametrize("key, value, message", [
    ("utterances_per_speaker", 1, "embedded.speech.utterances_per_speaker must be >= 2, got 1"),
    ("speakers", {"train": 2, "val": 1}, "embedded.speech.speakers"),
    ("speakers", {"train": 2, "val": 0, "test": 1}, "embedded.speech.speakers.val must be >= 1"),
    ("sentences_per_utterance", "2", "embedded.speech.sentences_per_utterance must be an integer"),
    ("pitch_range", [50, 120], "embedded.speech.pitch_range"),
    ("rate_range", [200, 100], "embedded.speech.rate_range"),
    ("voices", [], "embedded.speech.voices"),
    ("variants", ["nosuch"], "embedded.speech.variants"),
    ("variants", ["f2"], "not reproducible"),
])
def test_bad_cfg(tmp_path, key, value, message):
    cfg = copy.deepcopy(CFG)
    cfg[key] = value
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("[", r"\[")):
        embedded_speech.generate(tmp_path, cfg, seed=1)


def test_missing_and_unknown_keys(tmp_path):
    cfg = copy.deepcopy(CFG)
    del cfg["voices"]
    with pytest.raises(ValueError, match="embedded.speech.voices"):
        embedded_speech.generate(tmp_path, cfg, seed=1)
    with pytest.raises(ValueError, match="unknown key"):
        embedded_speech.generate(tmp_path, {**CFG, "speaker": 3}, seed=1)


def test_refused_voice_is_a_clear_error():
    with pytest.raises(RuntimeError, match="en-gb"):
        espeak.synthesize(espeak.Speaker("x", "en-gb", "", 50, 170), "Hello there.")
    with pytest.raises(RuntimeError, match="nosuchvariant"):
        espeak.synthesize(espeak.Speaker("x", "en", "nosuchvariant", 50, 170), "Hello there.")


def test_synthesize_deterministic_and_trimmed():
    speaker = espeak.Speaker("x", "en-us", "m3", 40, 170)
    first = espeak.synthesize(speaker, "The kettle was boiling in the kitchen.")
    espeak.synthesize(espeak.Speaker("y", "en", "klatt2", 70, 150), "Something else entirely, said quickly.")
    second = espeak.synthesize(speaker, "The kettle was boiling in the kitchen.")
    assert first.dtype == np.float32 and first.ndim == 1
    assert np.array_equal(first, second)
    threshold = np.abs(first).max() * 0.01
    active = np.flatnonzero(np.abs(first) >= threshold)
    assert active[0] <= 0.06 * 16000 and first.size - active[-1] <= 0.06 * 16000


def test_speaker_pool():
    pool = espeak.speaker_pool(20, 5, ["en", "en-us"], ["m1", "f1"], (40, 45), (160, 165), "s")
    assert pool == espeak.speaker_pool(20, 5, ["en", "en-us"], ["m1", "f1"], (40, 45), (160, 165), "s")
    assert [s.speaker_id for s in pool] == [f"s{i:04d}" for i in range(20)]
    assert len({(s.voice, s.variant, s.pitch, s.rate) for s in pool}) == 20
    with pytest.raises(ValueError, match="distinct"):
        espeak.speaker_pool(5, 0, ["en"], ["m1"], (40, 40), (160, 161), "s")
