"""Checkpoint round trips (vanilla and boosted) and clear errors for unusable files."""
import json
import zipfile

import pytest
import torch

from kboost.models import PAPER_SIZES, BoostedPair, GridNetSize, TFGridNet
from kboost.models.checkpoint import (
    CheckpointError, build_boosted, build_vanilla, load_checkpoint, read_checkpoint, save_checkpoint)

HOP = 128
TINY_SMALL = GridNetSize(emb_dim=8, hidden=8, blocks=3, window=5)
TINY_LARGE = GridNetSize(emb_dim=16, hidden=8, blocks=2, heads=2, window=6)
META = {"epoch": 3, "metrics": {"val_si_snri": 7.5}, "params": {"lr": 1e-3, "delays": [0, 1, 3, 6]}}


def _perturbed(model):
    """Move every parameter off its initial value so a reload cannot pass by re-initialising."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def test_vanilla_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _perturbed(build_vanilla("tse", PAPER_SIZES["small"]))
    path = tmp_path / "ckpt" / "small.pt"  # parent created
    save_checkpoint(path, model, META)
    loaded, info = load_checkpoint(path)
    assert isinstance(loaded, TFGridNet) and not loaded.training
    assert (info.kind, info.task, info.delay, info.compression) == ("vanilla", "tse", None, None)
    assert info.sizes == {"model": PAPER_SIZES["small"]}
    assert info.meta == json.loads(json.dumps(META)) and info.path == path
    audio, embedding = torch.randn(1, 2, 6 * HOP), torch.randn(1, 256)
    with torch.inference_mode():
        assert torch.equal(model(audio, embedding), loaded(audio, embedding))
    assert not list(tmp_path.glob("ckpt/.*"))  # no temporaries left by the atomic write


@pytest.mark.parametrize("compression", [1, 4])
def test_boosted_round_trip(tmp_path, compression):
    torch.manual_seed(1)
    pair = _perturbed(build_boosted("ss", TINY_SMALL, TINY_LARGE, delay=3, compression=compression))
    path = tmp_path / "boosted.pt"
    save_checkpoint(path, pair, {"epoch": 1})
    loaded, info = load_checkpoint(path)
    assert isinstance(loaded, BoostedPair) and loaded.delay == 3
    assert (info.kind, info.task, info.delay, info.compression) == ("boosted", "ss", 3, compression)
    assert info.sizes == {"small": TINY_SMALL, "large": TINY_LARGE}
    audio = torch.randn(1, 2, 8 * HOP)
    with torch.inference_mode():
        assert torch.equal(pair(audio), loaded(audio))


@pytest.mark.parametrize("merge_start", ["zeros", "masked"])
def test_merge_start_is_stored(tmp_path, merge_start):
    pair = build_boosted("ss", TINY_SMALL, TINY_LARGE, delay=2, merge_start=merge_start)
    save_checkpoint(tmp_path / "b.pt", pair, {})
    assert load_checkpoint(tmp_path / "b.pt")[0].merge_start == merge_start


def test_boosted_checkpoints_of_earlier_versions_load_as_masked(tmp_path):
    """Files written before merge_start was recorded were trained with the masked start."""
    save_checkpoint(tmp_path / "b.pt", build_boosted("ss", TINY_SMALL, TINY_LARGE, delay=2), {})
    payload = torch.load(tmp_path / "b.pt", weights_only=True)
    del payload["merge_start"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")[0].merge_start == "masked"


def test_plain_weights_only_load(tmp_path):
    """The file is readable with torch.load(weights_only=True) alone, as documented."""
    torch.manual_seed(2)
    model = build_vanilla("se", TINY_SMALL)
    save_checkpoint(tmp_path / "m.pt", model, {"epoch": 0, "note": None, "ok": True})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["format"] == 1 and payload["kind"] == "vanilla" and payload["task"] == "se"
    assert payload["sizes"] == {"model": TINY_SMALL.to_dict()}
    assert set(payload["state_dict"]) == set(model.state_dict())
    assert payload["meta"] == {"epoch": 0, "note": None, "ok": True}


def test_compiled_wrapper_is_unwrapped(tmp_path):
    """torch.compile's wrapper adds '_orig_mod.' to keys; the checkpoint stores the plain model."""
    model = build_vanilla("se", TINY_SMALL)

    class Wrapper(torch.nn.Module):  # stands in for OptimizedModule (same attribute name)
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    save_checkpoint(tmp_path / "c.pt", Wrapper(model), {})
    assert set(read_checkpoint(tmp_path / "c.pt")["state_dict"]) == set(model.state_dict())


def test_meta_must_be_json(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "m.pt", build_vanilla("se", TINY_SMALL), {"t": torch.zeros(1)})
    assert not list(tmp_path.iterdir())


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", b"PK\x03\x04 truncated zip"])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad\.pt: not a readable kboost checkpoint"):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "cut.pt"
    save_checkpoint(path, build_vanilla("se", TINY_SMALL), {})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable kboost checkpoint"):
        load_checkpoint(path)


def test_random_bytes_are_not_called_pickled_objects(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(CheckpointError, match=r"noise\.pt: .*not a PyTorch file at all: 5120 bytes"):
        load_checkpoint(path)


def test_pickled_code_is_refused(tmp_path):
    """A whole pickled module (torch.save(model)) needs unsafe unpickling: refused, clearly."""
    path = tmp_path / "module.pt"
    torch.save(build_vanilla("se", TINY_SMALL), path)
    with pytest.raises(CheckpointError, match=r"module\.pt: not a readable kboost checkpoint.*pickled Python objects"):
        load_checkpoint(path)


def test_other_torch_files(tmp_path):
    torch.save(build_vanilla("se", TINY_SMALL).state_dict(), tmp_path / "sd.pt")  # bare state_dict
    with pytest.raises(CheckpointError, match=r"sd\.pt: not a kboost checkpoint \(no 'format' field"):
        load_checkpoint(tmp_path / "sd.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: not a kboost checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def _tamper(path, change):
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def test_format_mismatch(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_vanilla("se", TINY_SMALL), {})
    _tamper(path, lambda p: p.update(format=2))
    with pytest.raises(CheckpointError, match=r"m\.pt: checkpoint format 2, this version of kboost reads format 1"):
        load_checkpoint(path)


def test_missing_and_unexpected_weights(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_vanilla("se", TINY_SMALL), {})

    def change(payload):
        state = payload["state_dict"]
        state["extra.weight"] = state.pop("input_norm.weight")

    _tamper(path, change)
    with pytest.raises(CheckpointError, match=r"m\.pt: weights do not fit.*missing 1 key\(s\): input_norm\.weight"
                                              r".*unexpected 1 key\(s\): extra\.weight"):
        load_checkpoint(path)


def test_wrong_sizes_in_header(tmp_path):
    """Header says one size, weights are of another: named as shape mismatches."""
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_vanilla("se", TINY_SMALL), {})
    _tamper(path, lambda p: p["sizes"]["model"].update(hidden=9))
    with pytest.raises(CheckpointError, match=r"m\.pt: weights of the wrong shape"):
        load_checkpoint(path)
    _tamper(path, lambda p: p.update(sizes={"small": TINY_SMALL.to_dict()}))
    with pytest.raises(CheckpointError, match=r"m\.pt: a vanilla checkpoint stores sizes for \['model'\]"):
        load_checkpoint(path)


def test_bad_header_values(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_boosted("se", TINY_SMALL, TINY_LARGE, delay=1), {})
    _tamper(path, lambda p: p.update(compression=3))
    with pytest.raises(CheckpointError, match=r"m\.pt: cannot build the stored model"):
        load_checkpoint(path)
    _tamper(path, lambda p: p.update(task="asr"))
    with pytest.raises(CheckpointError, match=r"m\.pt: unknown task 'asr'"):
        load_checkpoint(path)


def test_only_models_can_be_saved(tmp_path):
    with pytest.raises(TypeError, match="TFGridNet or a BoostedPair"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2), {})


def test_zip_is_torch_format(tmp_path):
    """Sanity: torch's zip format, so standard tools can inspect it."""
    save_checkpoint(tmp_path / "m.pt", build_vanilla("se", TINY_SMALL), {})
    assert zipfile.is_zipfile(tmp_path / "m.pt")
