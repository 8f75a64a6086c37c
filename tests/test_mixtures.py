import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from fake_corpus import make_corpus, tree_files
from kboost.audio import AudioError, quantize_pcm16
from kboost.dataset import MixtureDataset
from kboost.mixtures import SynthesisError, peak_scale, synthesize_task
from kboost.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_peak_scale_limits_every_stem_not_only_the_mixture():
    wave = np.sin(np.linspace(0, 20, 1000))[None].repeat(2, axis=0)
    loud, cancelling, noise = 1.2 * wave, -1.1 * wave, 0.01 * wave  # mixture peak ~0.11, a stem 1.2
    scale = peak_scale([loud, cancelling, noise], 0.9)
    assert scale == pytest.approx(0.9 / np.max(np.abs(loud)))
    for part in (loud, cancelling, noise):
        quantize_pcm16(part * scale)  # raises if a stem would clip
    assert peak_scale([0.1 * wave, 0.2 * wave], 0.9) == 1.0  # quiet mixtures are left alone
    assert peak_scale([0.6 * wave, 0.6 * wave], 0.9) == pytest.approx(0.9 / np.max(np.abs(1.2 * wave)))


def _params(workers=1):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    profile = copy.deepcopy(params["profiles"]["smoke"])
    profile["data"].update(workers=workers, clip_seconds=1.0, response_sets=["sim"],
                           mixtures={"train": 6, "val": 3, "test": 3})
    return params, profile


def _tree_equal(a: Path, b: Path) -> bool:
    return tree_files(a) == tree_files(b)


@pytest.mark.parametrize("task", ["se", "ss"])
def test_mixture_is_exact_sum_and_layout(corpus, tmp_path, task):
    params, profile = _params()
    out = tmp_path / task
    summary = synthesize_task(task, corpus, out, params, profile)
    assert summary["splits"]["train"]["mixtures"] == 6
    manifest = pd.read_csv(out / "train" / "manifest.csv")
    assert len(manifest) == 6 and manifest["mixture_id"].is_unique
    for row in manifest.itertuples():
        mix, rate = sf.read(out / "train" / row.path_mixture, always_2d=True)
        assert rate == 16000 and mix.shape == (16000, 2)
        parts = sum(sf.read(out / "train" / getattr(row, f"path_{s}"), always_2d=True)[0] for s in TASKS[task].stems[1:])
        np.testing.assert_array_equal(mix, parts)  # bit-exact: stems live on the 16-bit grid
        assert np.max(np.abs(mix)) <= params["data"]["peak_limit"] + 1e-3
    if task == "ss":
        assert (manifest["t1_speaker_id"] != manifest["t2_speaker_id"]).all()
        # Speakers of a split never leak into another.
        test = pd.read_csv(out / "test" / "manifest.csv")
        train_speakers = set(manifest["t1_speaker_id"]) | set(manifest["t2_speaker_id"])
        assert not (set(test["t1_speaker_id"]) | set(test["t2_speaker_id"])) & train_speakers


def test_snr_matches_manifest(corpus, tmp_path):
    params, profile = _params()
    out = tmp_path / "se"
    synthesize_task("se", corpus, out, params, profile)
    manifest = pd.read_csv(out / "val" / "manifest.csv")
    for row in manifest.itertuples():
        target = sf.read(out / "val" / row.path_target)[0]
        noise = sf.read(out / "val" / row.path_noise)[0]
        snr = 10 * np.log10(np.sum(target**2) / np.sum(noise**2))
        assert abs(snr - row.snr_db) < 0.05


def test_deterministic_and_worker_independent(corpus, tmp_path):
    params, profile1 = _params(workers=1)
    _, profile2 = _params(workers=2)
    synthesize_task("ss", corpus, tmp_path / "a", params, profile1)
    synthesize_task("ss", corpus, tmp_path / "b", params, profile2)
    assert _tree_equal(tmp_path / "a", tmp_path / "b")
    params["seed"] += 1
    synthesize_task("ss", corpus, tmp_path / "c", params, profile1)
    assert not _tree_equal(tmp_path / "a", tmp_path / "c")


def test_tse_embeddings_and_dataset(corpus, tmp_path):
    params, profile = _params()
    out = tmp_path / "tse"
    synthesize_task("tse", corpus, out, params, profile)
    manifest = pd.read_csv(out / "test" / "manifest.csv")
    assert (manifest["enrol_utt_id"] != manifest["t1_utt_id"]).all()
    enrol_speakers = manifest["enrol_utt_id"].str.split("-").str[0]
    assert (enrol_speakers == manifest["t1_speaker_id"]).all()
    emb = np.load(out / "test" / "embeddings.npy")
    assert emb.shape == (3, 256) and np.all(np.isfinite(emb))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    dataset = MixtureDataset(out, "test")
    item = dataset[0]
    assert item["mixture"].shape == (2, 16000)
    assert item["targets"].shape == (1, 2, 16000)
    assert item["embedding"].shape == (256,)


def test_ss_dataset_has_two_targets(corpus, tmp_path):
    params, profile = _params()
    synthesize_task("ss", corpus, tmp_path / "ss", params, profile)
    item = MixtureDataset(tmp_path / "ss", "val")[1]
    assert item["targets"].shape == (2, 2, 16000)
    assert item["id"] == "ss-val-000001"


def test_bad_source_file_named_and_nothing_published(corpus, tmp_path):
    import shutil
    broken = tmp_path / "corpus"
    shutil.copytree(corpus, broken)
    # Every utterance at the wrong sample rate: the first one read must be named.
    for p in (broken / "speech").rglob("*.flac"):
        data, _ = sf.read(p)
        sf.write(p, data, 8000)
    params, profile = _params()
    out = tmp_path / "out"
    with pytest.raises(AudioError, match=r"expected sample rate 16000 Hz, found 8000 Hz"):
        synthesize_task("se", broken, out, params, profile)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_silent_source_is_an_error(corpus, tmp_path):
    import shutil
    broken = tmp_path / "corpus"
    shutil.copytree(corpus, broken)
    for p in (broken / "speech" / "train").rglob("*.flac"):
        data, rate = sf.read(p)
        sf.write(p, np.zeros_like(data), rate)
    params, profile = _params()
    with pytest.raises(AudioError, match=r"speech/train/.*\.flac: audio is silent"):
        synthesize_task("se", broken, tmp_path / "out", params, profile)


def test_missing_response_set_is_explained(corpus, tmp_path):
    params, profile = _params()
    profile["data"]["response_sets"] = ["cipic"]
    with pytest.raises(SynthesisError, match=r"response sets \['cipic'\]"):
        synthesize_task("se", corpus, tmp_path / "out", params, profile)


def test_wrong_channel_count_in_noise_is_named(corpus, tmp_path):
    import shutil
    broken = tmp_path / "corpus"
    shutil.copytree(corpus, broken)
    for p in (broken / "noise").rglob("*.flac"):
        data, rate = sf.read(p)
        sf.write(p, data[:, 0], rate)  # mono instead of binaural
    params, profile = _params()
    with pytest.raises(AudioError, match=r"noise/.*\.flac: expected 2 channel\(s\), found 1"):
        synthesize_task("se", broken, tmp_path / "out", params, profile)
