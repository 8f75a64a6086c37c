"""``kboost stream``: streamed output equals the whole-clip model, and input errors are explained."""
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from kboost import cli
from kboost.models import PAPER_SIZES, count_parameters
from kboost.models.checkpoint import build_boosted, build_vanilla, save_checkpoint

RATE, HOP = 16000, 128
SAMPLES = 8000  # 0.5 s: 62.5 chunks, so the CLI has to pad


def _wav(path, channels=2, rate=RATE, samples=SAMPLES, seed=0):
    audio = 0.1 * np.random.default_rng(seed).standard_normal((samples, channels)).astype(np.float32)
    sf.write(str(path), audio, rate, subtype="FLOAT")
    return path


def _run(*args):
    """The CLI in a fresh interpreter, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "kboost.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _reference(model, path, embedding=None):
    """Whole-clip forward on the input as the CLI feeds it (zeros up to whole chunks plus one
    chunk), trimmed to the input length: [channels, samples]."""
    audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
    samples = audio.shape[0]
    padded = torch.zeros(1, 2, (-(-samples // HOP) + 1) * HOP)
    padded[0, :, :samples] = torch.from_numpy(audio.T)
    emb = None if embedding is None else torch.as_tensor(embedding).view(1, -1)
    with torch.inference_mode():
        out = model.eval()(padded, emb)[..., :samples]
    return out.reshape(-1, samples).numpy()


def _check_output(result, path, expected, params):
    assert result.returncode == 0, result.stderr
    out, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == RATE and out.shape == (SAMPLES, expected.shape[0])
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(out.T - expected).max() <= 1e-4 * scale, np.abs(out.T - expected).max()
    assert "real-time factor:" in result.stdout and "mean time per chunk:" in result.stdout
    assert f"parameters: {params:,}" in result.stdout


def test_thread_limit_holds_for_every_library_the_engine_loads(tmp_path):
    """--threads 1: torch, numpy's and SciPy's BLAS (loaded only when numba compiles) and
    OpenMP all run one thread, as threadpoolctl sees them while the chunks stream."""
    result = _run("stream", _wav(tmp_path / "in.wav"), tmp_path / "out.wav", "--random-init", "--task", "ss",
                  "--model", "small", "--threads", 1)
    assert result.returncode == 0, result.stderr
    assert "compiles for a few minutes" in result.stdout
    line = next(text for text in result.stdout.splitlines() if text.startswith("threads: "))
    counts = [int(part.rsplit(" ", 1)[1]) for part in line[len("threads: "):].split(", ")]
    assert line.startswith("threads: torch 1") and len(counts) >= 2 and set(counts) == {1}, line


@pytest.mark.parametrize("name, message", [
    ("out.mp3", r"cannot write audio with '\.mp3'; use \.wav"),
    ("out", r"cannot write audio with no extension"),
    ("folder", r"is a directory"),
    ("missing/out.wav", r"folder .*missing does not exist"),
])
def test_unwritable_output_fails_before_any_streaming(tmp_path, name, message):
    (tmp_path / "folder").mkdir()
    result = _run("stream", _wav(tmp_path / "in.wav"), tmp_path / name, "--random-init", "--task", "se")
    assert result.returncode == 2
    assert re.search(message, result.stderr), result.stderr
    assert "real-time factor" not in result.stdout and "preparing the compiled engine" not in result.stdout


def test_se_small_random_init(tmp_path):
    source = _wav(tmp_path / "in.wav")
    result = _run("stream", source, tmp_path / "out.wav", "--random-init", "--task", "se",
                  "--model", "small", "--seed", 5, "--threads", 1)
    torch.manual_seed(5)
    model = build_vanilla("se", PAPER_SIZES["small"])
    _check_output(result, tmp_path / "out.wav", _reference(model, source), count_parameters(model))


@pytest.mark.parametrize("engine", ["compiled", "torch"])
def test_ss_boosted_pair_delay_3(tmp_path, engine):
    source = _wav(tmp_path / "in.wav", seed=1)
    result = _run("stream", source, tmp_path / "out.wav", "--random-init", "--task", "ss",
                  "--model", "boosted", "--delay", 3, "--compression", 2, "--engine", engine)
    torch.manual_seed(0)
    pair = build_boosted("ss", PAPER_SIZES["small"], PAPER_SIZES["large"], delay=3, compression=2)
    expected = _reference(pair, source)
    assert expected.shape[0] == 4  # speaker 1 L/R, speaker 2 L/R
    _check_output(result, tmp_path / "out.wav", expected, count_parameters(*pair.device_modules()))
    assert "delay 3 chunks = 24 ms" in result.stdout and "of which on device" in result.stdout
    assert f"engine: {engine}" in result.stdout


def test_tse_checkpoint_with_embedding(tmp_path):
    source = _wav(tmp_path / "in.wav", seed=2)
    torch.manual_seed(3)
    model = build_vanilla("tse", PAPER_SIZES["small"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # not the seed-0 init the CLI could rebuild
    save_checkpoint(tmp_path / "tse.pt", model, {"epoch": 7})
    embedding = np.random.default_rng(4).standard_normal(256).astype(np.float32)
    np.save(tmp_path / "emb.npy", embedding)
    result = _run("stream", source, tmp_path / "out.wav", "--checkpoint", tmp_path / "tse.pt",
                  "--embedding", tmp_path / "emb.npy")
    _check_output(result, tmp_path / "out.wav", _reference(model, source, embedding), count_parameters(model))
    assert "(epoch 7)" in result.stdout


def test_help_explains_the_output():
    result = _run("stream", "--help")
    assert result.returncode == 0
    for text in ("speaker 1 left", "64 samples", "real-time factor", "--enrol", "--embedding", "--delay"):
        assert text in result.stdout


def test_wrong_channel_count_is_an_error_naming_the_file(tmp_path):
    mono = _wav(tmp_path / "mono.wav", channels=1)
    result = _run("stream", mono, tmp_path / "out.wav", "--random-init", "--task", "se")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {mono}: expected 2 channel(s), found 1"
    assert not (tmp_path / "out.wav").exists()


def _main_error(capsys, *args):
    """Run ``main`` in-process (faster than a subprocess); return the one-line error."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_more_channels_and_wrong_rate(tmp_path, capsys):
    three = _wav(tmp_path / "three.wav", channels=3)
    assert f"{three}: expected 2 channel(s), found 3" in _main_error(
        capsys, "stream", three, tmp_path / "o.wav", "--random-init", "--task", "se")
    slow = _wav(tmp_path / "slow.wav", rate=8000)
    assert f"{slow}: expected sample rate 16000 Hz, found 8000 Hz" in _main_error(
        capsys, "stream", slow, tmp_path / "o.wav", "--random-init", "--task", "se")
    assert "missing.wav: cannot read audio" in _main_error(
        capsys, "stream", tmp_path / "missing.wav", tmp_path / "o.wav", "--random-init", "--task", "se")


def test_tse_needs_a_speaker(tmp_path, capsys):
    source = _wav(tmp_path / "in.wav")
    err = _main_error(capsys, "stream", source, tmp_path / "o.wav", "--random-init", "--task", "tse")
    assert "needs the target speaker" in err and "--enrol" in err and "--embedding" in err
    np.save(tmp_path / "short.npy", np.zeros(128, np.float32))
    err = _main_error(capsys, "stream", source, tmp_path / "o.wav", "--random-init", "--task", "tse",
                      "--embedding", tmp_path / "short.npy")
    assert f"{tmp_path / 'short.npy'}: expected 256 numbers" in err
    err = _main_error(capsys, "stream", source, tmp_path / "o.wav", "--random-init", "--task", "tse",
                      "--embedding", tmp_path / "none.npy")
    assert "none.npy: no such embedding file" in err
    err = _main_error(capsys, "stream", source, tmp_path / "o.wav", "--random-init", "--task", "se",
                      "--embedding", tmp_path / "short.npy")
    assert "target speech extraction only" in err


def test_bad_option_combinations_and_checkpoints(tmp_path, capsys):
    source = _wav(tmp_path / "in.wav")
    assert "--random-init needs --task" in _main_error(capsys, "stream", source, tmp_path / "o.wav", "--random-init")
    assert "--model boosted only" in _main_error(
        capsys, "stream", source, tmp_path / "o.wav", "--random-init", "--task", "se", "--delay", 3)
    save_checkpoint(tmp_path / "se.pt", build_vanilla("se", PAPER_SIZES["small"]), {})
    assert "--task describe a --random-init model" in _main_error(
        capsys, "stream", source, tmp_path / "o.wav", "--checkpoint", tmp_path / "se.pt", "--task", "ss")
    (tmp_path / "junk.pt").write_text("junk")
    assert f"{tmp_path / 'junk.pt'}: not a readable kboost checkpoint" in _main_error(
        capsys, "stream", source, tmp_path / "o.wav", "--checkpoint", tmp_path / "junk.pt")
    assert not (tmp_path / "o.wav").exists()


def test_stereo_enrolment_is_averaged(tmp_path, monkeypatch):
    """--enrol: the d-vector of the mono average of a 16 kHz enrolment file conditions the model."""
    enrol = _wav(tmp_path / "enrol.wav", samples=RATE, seed=9)
    seen = {}

    def fake_embed(wav, sample_rate=16000):
        seen["wav"], seen["rate"] = wav, sample_rate
        return np.ones(256, np.float32)

    monkeypatch.setattr("kboost.speaker.embed_utterance", fake_embed)
    args = cli.build_parser().parse_args(["stream", "in.wav", "out.wav", "--random-init", "--task", "tse",
                                          "--enrol", str(enrol)])
    embedding = cli._embedding_from_args(args, "tse")
    stereo, _ = sf.read(str(enrol), dtype="float32")
    assert embedding.shape == (1, 256) and seen["rate"] == RATE
    np.testing.assert_allclose(seen["wav"], stereo.mean(axis=1), rtol=1e-6)
