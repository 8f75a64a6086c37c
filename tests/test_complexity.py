"""MAC counter against hand-written analytic counts, parameter check figures, report structure."""
import math

import pytest
import torch
from ptflops import get_model_complexity_info
from torch import nn

from kboost.complexity import CHUNKS_PER_SECOND, CONVENTION, MacCounter, chunk_macs, complexity_report
from kboost.models import PAPER_SIZES, GridNetSize, MergeModule
from kboost.models.gridnet import GridNetBlock

F = 97  # frequencies


def lstm_step(d, h):
    """ptflops' LSTM count of one step, one direction: gate weights + 18 H (gate adds, cell and
    hidden products, two biases)."""
    return 4 * h * (d + h) + 4 * h + 3 * h + 3 * h + 4 * h + 4 * h


def linear(n_in, n_out, positions=F):
    return (n_in * n_out + n_out) * positions


def block_without_attention(d, h):
    return (F * d                            # intra LayerNorm, 1 per element
            + 2 * F * lstm_step(d, h)        # BiLSTM over the 97 frequencies, both directions
            + linear(2 * h, d)               # intra projection
            + F * d                          # inter LayerNorm
            + F * lstm_step(d, h)            # inter-frame LSTM: one step for each frequency
            + linear(h, d))                  # inter projection


def attention(d, heads, qk, v, keys):
    return (2 * linear(d, heads * qk) + linear(d, d)                  # Q, K, V projections
            + 2 * (F * heads * qk) + F * d                             # PReLU of Q, K, V
            + 2 * (F * heads * qk) + F * d                             # norms of Q, K, V
            + heads * 1 * keys * F * (qk + v)                           # QK^T and AV (T_q = 1)
            + linear(d, d) + F * d + F * d)                            # output Linear, PReLU, LayerNorm


def _run_block(block, frames, state=None):
    for _ in range(frames):
        _, state = block(torch.randn(1, 1, F, block.intra_norm.normalized_shape[0]), state)
    return state


def _count_block(block, state):
    x = torch.randn(1, 1, F, block.intra_norm.normalized_shape[0])
    with MacCounter({"block": [block]}) as counter:
        block(x, state)
    return counter.totals()["block"]


@torch.no_grad()
def test_gridnet_block_paper_small_matches_analytic_count():
    size = PAPER_SIZES["small"]
    block = GridNetBlock(size).eval()
    state = _run_block(block, 3)  # warm: the inter-frame LSTM now runs torch.lstm_cell
    assert _count_block(block, state) == block_without_attention(16, 16)
    assert block_without_attention(16, 16) == 97 * (16 + 2 * 2336 + 528 + 16 + 2336 + 272)


@torch.no_grad()
def test_gridnet_block_with_attention_warm_and_cold():
    window = 10
    block = GridNetBlock(GridNetSize(emb_dim=16, hidden=8, blocks=1, heads=2, window=window)).eval()
    qk = math.ceil(512 / F)
    assert qk == 6
    base = block_without_attention(16, 8)
    # Cold: the first frame attends to itself only (and the inter LSTM runs as nn.LSTM).
    assert _count_block(block, None) == base + attention(16, 2, qk, 8, keys=1)
    # Warm: window - 1 past frames in the cache plus the current one.
    state = _run_block(block, window - 1)
    assert state["attention"][2] == window - 1
    assert _count_block(block, state) == base + attention(16, 2, qk, 8, keys=window)
    state = _run_block(block, 2 * window, state)  # slots wrap around: still `window` keys
    assert _count_block(block, state) == base + attention(16, 2, qk, 8, keys=window)


@torch.no_grad()
def test_merge_module_warm_matches_analytic_count():
    d, hint_channels, window, delay = 16, 8, 50, 3
    merge = MergeModule(d, hint_channels, delay, window).eval()
    state = None
    for _ in range(window + delay + 5):
        _, state = merge(torch.randn(1, 1, F, d), torch.randn(1, 1, F, hint_channels), state)
    with MacCounter({"merge": [merge]}) as counter:
        merge(torch.randn(1, 1, F, d), torch.randn(1, 1, F, hint_channels), state)
    qk = math.ceil(256 / F)
    film = 2 * linear(hint_channels, d)  # scale and shift projections of the hint
    expected = film + attention(d, 4, qk, d // 4, keys=window)
    assert counter.totals()["merge"] == expected
    # Per frequency: FiLM 2 x (8*16 + 16), Q/K 2 x (16*12 + 12), V 16*16 + 16, PReLUs 12 + 12 + 16,
    # norms 12 + 12 + 16, output 16*16 + 16 + PReLU 16 + LayerNorm 16; products 4 heads x 50 keys.
    assert expected == 97 * (288 + 408 + 272 + 40 + 40 + 272 + 16 + 16) + 4 * 50 * 97 * (3 + 4) == 266_944


@torch.no_grad()
def test_whole_clip_equals_frames_and_agrees_with_ptflops_entry_point():
    """The nn.LSTM path (whole clip, ptflops' own hook) and the streaming torch.lstm_cell path give
    the same per-frame count, and ptflops' get_model_complexity_info agrees on a block it fully
    knows (no custom modules)."""
    block = GridNetBlock(PAPER_SIZES["medium"]).eval()
    frames = 5
    x = torch.randn(1, frames, F, 26)
    with MacCounter({"block": [block]}) as counter:
        block(x)
    assert counter.totals()["block"] == frames * block_without_attention(26, 18)
    macs, params = get_model_complexity_info(block, (frames, F, 26), as_strings=False, backend="pytorch",
                                             print_per_layer_stat=False)
    assert macs == frames * block_without_attention(26, 18)


def test_unknown_module_with_parameters_is_refused():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

    with pytest.raises(TypeError, match="no rule"):
        with MacCounter({"x": [nn.Sequential(Odd())]}):
            pass


def test_callable_target_counts_only_its_groups():
    torch.manual_seed(0)
    merge = MergeModule(8, 4, delay=1, window=5).eval()
    other = nn.Linear(8, 8)
    state = {}

    def step():
        x = other(torch.randn(1, 1, F, 8))  # runs, but is not in the groups: not counted
        _, state["merge"] = merge(x, torch.randn(1, 1, F, 4), state.get("merge"))

    counted = chunk_macs(step, groups={"merge": [merge]})
    assert counted["macs"]["merge"] == 2 * linear(4, 8) + attention(8, 4, 3, 2, keys=5)


@pytest.fixture(scope="module")
def ss_report():
    return complexity_report("ss", PAPER_SIZES, delay=6, compression=1)


def test_parameters_of_paper_ss_models(ss_report):
    models = ss_report["models"]
    assert models["small"]["params"] == 23_960
    assert models["medium"]["params"] == 37_382
    assert models["large"]["params"] == 518_771
    assert models["boosted_small"]["params"] == 36_536


def test_report_structure_and_boosted_small_cheaper_than_medium(ss_report):
    assert ss_report["task"] == "ss" and ss_report["delay"] == 6 and ss_report["compression"] == 1
    models = ss_report["models"]
    assert set(models) >= {"small", "medium", "large", "boosted_small", "merge_modules", "compression", "remote_total"}
    sides = {name: entry["side"] for name, entry in models.items()}
    assert sides == {"small": "device", "medium": "device", "large": "remote", "boosted_small": "device",
                     "merge_modules": "device", "compression": "remote", "remote_total": "remote"}
    for entry in models.values():
        assert entry["macs_per_chunk"] > 0
        assert entry["macs_per_second"] == CHUNKS_PER_SECOND * entry["macs_per_chunk"]
        assert sum(entry["breakdown_macs_per_chunk"].values()) == entry["macs_per_chunk"]
    assert models["boosted_small"]["macs_per_chunk"] == models["small"]["macs_per_chunk"] + models["merge_modules"]["macs_per_chunk"]
    assert models["remote_total"]["macs_per_chunk"] == models["large"]["macs_per_chunk"] + models["compression"]["macs_per_chunk"]
    # Compression: causal 3x3 conv 8 -> 8 channels over one frame, plus bias.
    assert models["compression"]["macs_per_chunk"] == 9 * 8 * 8 * F + 8 * F
    # Small model: input conv, 3 blocks, output layer (3x3 conv 16 -> 8), input LayerNorm.
    small = 9 * 4 * 16 * F + 16 * F + F * 16 + 3 * block_without_attention(16, 16) + 9 * 16 * 8 * F + 8 * F
    assert models["small"]["macs_per_chunk"] == small
    assert models["boosted_small"]["macs_per_chunk"] < models["medium"]["macs_per_chunk"]
    reduction = ss_report["reduction_vs_medium"]
    assert reduction["macs_per_chunk"] == models["medium"]["macs_per_chunk"] - models["boosted_small"]["macs_per_chunk"]
    assert "STFT" in " ".join(CONVENTION["not_counted"])
