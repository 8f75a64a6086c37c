"""Our models equal the authors' released code (github vysri/knowledge-boosting) sample for sample.

The reference outputs live outside the project, in ../shared/reference/authors-outputs/ (the
authors' models at random init, their state dicts, inputs and whole-clip / streaming outputs;
see its README). Each model is imported with the converter and compared on ALL output samples,
the clip's last 64 included.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kboost.models import HOP, BoostedPair
from kboost.models.authors import AuthorsCheckpointError, convert_authors, import_authors
from kboost.models.checkpoint import load_checkpoint
from kboost.streaming import compile_model

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "authors-outputs"
NAMES = ["ss-small", "ss-large", "tse-small", "ss-boosted-d6"]
TOLERANCE = 1e-5  # relative to the output's peak

needs_reference = pytest.mark.skipif(not (REFERENCE / "models.json").is_file(),
                                     reason=f"authors' reference outputs not found in {REFERENCE}")


def _delay(name: str) -> int | None:
    config = json.loads((REFERENCE / "models.json").read_text())[name]["config_params"]
    return config.get("joint_model_params", {}).get("delay")


def _reference(name: str):
    io = torch.load(REFERENCE / f"{name}.io.pt", weights_only=True)
    return io["input"], io.get("embedding"), io["whole_output"], io["streaming_output"]


def _relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _stream(model, audio, embedding):
    state = model.initial_state(audio.shape[0])
    outs = []
    for k in range(audio.shape[-1] // HOP):
        out, state = model.step(audio[..., k * HOP:(k + 1) * HOP], state, embedding)
        outs.append(out)
    return torch.cat(outs, dim=-1)


@needs_reference
@pytest.mark.parametrize("name", NAMES)
def test_imported_model_equals_the_authors_whole_and_streaming(name):
    model = import_authors(REFERENCE / f"{name}.state_dict.pt", delay=_delay(name))
    audio, embedding, whole, streamed = _reference(name)
    with torch.inference_mode():
        assert _relative(model(audio, embedding), whole) <= TOLERANCE
        assert _relative(_stream(model, audio, embedding), streamed) <= TOLERANCE


@needs_reference
def test_compiled_engine_equals_the_authors_streaming_output():
    """The numba engine, including the merge attention's zero start, on the boosted pair."""
    model = import_authors(REFERENCE / "ss-boosted-d6.state_dict.pt", delay=6)
    audio, _, _, streamed = _reference("ss-boosted-d6")
    for item in range(audio.shape[0]):
        engine = compile_model(model)
        state = engine.initial_state()
        chunks = audio[item].numpy()
        out = np.concatenate([engine.step(chunks[:, k * HOP:(k + 1) * HOP], state)
                              for k in range(chunks.shape[-1] // HOP)], axis=-1)
        assert _relative(torch.from_numpy(out), streamed[item]) <= TOLERANCE


@needs_reference
def test_masked_merge_start_is_not_the_authors():
    """The other setting of model.merge_start really differs (so the comparison above can fail)."""
    model = import_authors(REFERENCE / "ss-boosted-d6.state_dict.pt", delay=6)
    masked = BoostedPair(model.small, model.large, delay=6, merge_start="masked").eval()
    masked.load_state_dict(model.state_dict())
    audio, _, whole, _ = _reference("ss-boosted-d6")
    with torch.inference_mode():
        assert _relative(masked(audio), whole) > 0.01


@needs_reference
def test_cli_import_writes_a_checkpoint_that_streams_like_the_authors(tmp_path):
    out = tmp_path / "boosted.pt"
    done = subprocess.run([sys.executable, "-m", "kboost.cli", "import-authors",
                           str(REFERENCE / "ss-boosted-d6.state_dict.pt"), str(out), "--delay", "6"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "delay 6 chunks, compression 1" in done.stdout
    model, info = load_checkpoint(out)
    assert (info.kind, info.task, info.delay, info.compression) == ("boosted", "ss", 6, 1)
    audio, _, _, streamed = _reference("ss-boosted-d6")
    with torch.inference_mode():
        assert _relative(_stream(model, audio, None), streamed) <= TOLERANCE


@needs_reference
def test_a_joint_model_without_its_delay_is_refused():
    with pytest.raises(AuthorsCheckpointError, match="needs its delay"):
        import_authors(REFERENCE / "ss-boosted-d6.state_dict.pt")


@needs_reference
def test_a_tensor_left_over_or_missing_is_named():
    theirs = torch.load(REFERENCE / "ss-small.state_dict.pt", weights_only=True)
    extra = dict(theirs, **{"tfgridnet.blocks.0.stray": torch.zeros(3)})
    with pytest.raises(AuthorsCheckpointError, match="tfgridnet.blocks.0.stray"):
        convert_authors(extra)
    missing = {k: v for k, v in theirs.items() if k != "tfgridnet.blocks.1.inter_linear.bias"}
    with pytest.raises(AuthorsCheckpointError, match="tfgridnet.blocks.1.inter_linear.bias"):
        convert_authors(missing)
    with pytest.raises(AuthorsCheckpointError, match="not a tse model"):
        convert_authors(theirs, task="tse")


@needs_reference
def test_lightning_checkpoints_are_read(tmp_path):
    theirs = torch.load(REFERENCE / "ss-small.state_dict.pt", weights_only=True)
    path = tmp_path / "SM-BS-25.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in theirs.items()}}, path)
    assert import_authors(path).size.emb_dim == 16


def test_files_that_are_not_authors_checkpoints_get_one_clear_error(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(AuthorsCheckpointError, match="not a readable PyTorch checkpoint"):
        import_authors(junk)
    other = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, other)
    with pytest.raises(AuthorsCheckpointError, match="not a checkpoint of the authors' TF-GridNet"):
        import_authors(other)
    with pytest.raises(AuthorsCheckpointError, match="no such file"):
        import_authors(tmp_path / "absent.ckpt")
