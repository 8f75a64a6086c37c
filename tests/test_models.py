"""Streaming equals whole-clip, causality, parameter counts and input errors of the models."""
import pytest
import torch

from kboost.models import PAPER_SIZES, BoostedPair, GridNetSize, ModelInputError, TFGridNet, count_parameters

HOP = 128
TASKS = ["se", "ss", "tse"]
# A small attention window so the tests also cover frames leaving the window.
TINY_LARGE = GridNetSize(emb_dim=16, hidden=8, blocks=2, heads=2, window=6)
TINY_SMALL = GridNetSize(emb_dim=8, hidden=8, blocks=3, window=5)


def _embedding(task, batch=1):
    return torch.randn(batch, 256) if task == "tse" else None


def _stream(model, audio, embedding, **kwargs):
    """Run ``model`` chunk by chunk, then one silent chunk (which makes the clip's last 64
    samples final); return all N output samples aligned with the input (lag removed)."""
    n = audio.shape[-1]
    audio = torch.nn.functional.pad(audio, (0, HOP))
    kwargs = {key: torch.nn.functional.pad(value, (0, HOP)) for key, value in kwargs.items()}
    state = model.initial_state(audio.shape[0])
    outs = []
    for k in range(audio.shape[-1] // HOP):
        extra = {key: value[..., k * HOP:(k + 1) * HOP] for key, value in kwargs.items()}
        out, state = model.step(audio[..., k * HOP:(k + 1) * HOP], state, embedding, **extra)
        outs.append(out)
    return torch.cat(outs, dim=-1)[..., 64: 64 + n]


def _assert_close(whole, streamed):
    """All samples, the clip's last 64 included."""
    assert whole.shape == streamed.shape
    scale = whole.abs().max()
    assert torch.isfinite(streamed).all()
    assert (whole - streamed).abs().max() <= 1e-5 * scale, (whole - streamed).abs().max() / scale


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_vanilla_streaming_equals_whole_clip(task, size):
    torch.manual_seed(0)
    model = TFGridNet(task, PAPER_SIZES[size]).eval()
    audio, embedding = torch.randn(2, 2, 12 * HOP), _embedding(task, 2)
    with torch.inference_mode():
        _assert_close(model(audio, embedding), _stream(model, audio, embedding))


# The authors' merge start ("zeros") on the whole grid, the other one on SS with P = 1.
BOOSTED_GRID = [(task, delay, compression, "zeros") for task in TASKS for delay in (0, 1, 3, 6)
                for compression in (1, 2, 4)] + [("ss", delay, 1, "masked") for delay in (0, 1, 3, 6)]


@pytest.mark.parametrize("task, delay, compression, merge_start", BOOSTED_GRID)
def test_boosted_streaming_equals_whole_clip(task, delay, compression, merge_start):
    torch.manual_seed(1)
    pair = BoostedPair(TFGridNet(task, PAPER_SIZES["small"]), TFGridNet(task, PAPER_SIZES["large"]),
                       delay=delay, compression=compression, merge_start=merge_start).eval()
    audio, embedding = torch.randn(1, 2, 10 * HOP), _embedding(task)
    with torch.inference_mode():
        _assert_close(pair(audio, embedding), _stream(pair, audio, embedding))


@pytest.mark.parametrize("delay", [0, 2, 7])
@pytest.mark.parametrize("merge_start", ["zeros", "masked"])
def test_windows_expire_the_same_way_in_both_paths(delay, merge_start):
    """Clips longer than the attention windows (self-attention and merge cross-attention)."""
    torch.manual_seed(2)
    pair = BoostedPair(TFGridNet("ss", TINY_SMALL), TFGridNet("ss", TINY_LARGE), delay=delay,
                       merge_start=merge_start).eval()
    audio = torch.randn(1, 2, 24 * HOP)
    with torch.inference_mode():
        _assert_close(pair(audio), _stream(pair, audio, None))


def test_paper_parameter_counts_ss():
    sizes = {name: count_parameters(TFGridNet("ss", PAPER_SIZES[name])) for name in PAPER_SIZES}
    assert sizes == {"small": 23_960, "medium": 37_382, "large": 518_771}
    pair = BoostedPair(TFGridNet("ss", PAPER_SIZES["small"]), TFGridNet("ss", PAPER_SIZES["large"]), delay=6)
    assert count_parameters(*pair.device_modules()) == 36_536


@pytest.mark.parametrize("model_kind", ["small", "large", "boosted"])
def test_whole_clip_is_causal_beyond_the_lookahead(model_kind):
    torch.manual_seed(3)
    if model_kind == "boosted":
        model = BoostedPair(TFGridNet("tse", TINY_SMALL), TFGridNet("tse", TINY_LARGE), delay=2).eval()
    else:
        model = TFGridNet("tse", PAPER_SIZES[model_kind]).eval()
    audio, embedding = torch.randn(1, 2, 16 * HOP), _embedding("tse")
    changed = audio.clone()
    start = 9 * HOP  # input from here on changes
    changed[..., start:] = torch.randn_like(changed[..., start:])
    with torch.inference_mode():
        a, b = model(audio, embedding), model(changed, embedding)
    # Output sample p depends on input up to p + 64 (lookahead) rounded up to a chunk.
    assert torch.equal(a[..., : start - 64], b[..., : start - 64])
    assert not torch.equal(a[..., start - 64:], b[..., start - 64:])


@pytest.mark.parametrize("delay", [0, 1, 3, 6])
def test_poisoned_remote_input_reaches_device_only_after_the_delay(delay):
    torch.manual_seed(4)
    pair = BoostedPair(TFGridNet("ss", PAPER_SIZES["small"]), TFGridNet("ss", PAPER_SIZES["large"]), delay=delay).eval()
    chunks, poisoned_chunk = 14, 5
    audio = torch.randn(1, 2, chunks * HOP)
    poisoned = audio.clone()
    poisoned[..., poisoned_chunk * HOP:(poisoned_chunk + 1) * HOP] = float("nan")
    clean_state, bad_state = pair.initial_state(), pair.initial_state()
    with torch.inference_mode():
        for k in range(chunks):
            chunk = audio[..., k * HOP:(k + 1) * HOP]
            clean, clean_state = pair.step(chunk, clean_state)
            bad, bad_state = pair.step(chunk, bad_state, large_chunk=poisoned[..., k * HOP:(k + 1) * HOP])
            if k < poisoned_chunk + delay:
                assert torch.isfinite(bad).all() and torch.equal(clean, bad), k
            else:
                assert not torch.isfinite(bad).all(), k  # the NaN hint has arrived


@pytest.mark.parametrize("call, message", [
    (lambda m: m(torch.randn(1, 1, 256)), r"binaural audio shaped \[batch, 2, samples\]"),
    (lambda m: m(torch.randn(1, 2, 200)), r"multiple of 128"),
    (lambda m: m.step(torch.randn(1, 2, 100), m.initial_state()), r"chunk is 128 samples"),
    (lambda m: m(torch.randn(1, 2, 256)), r"needs the target speaker's 256-d embedding"),
    (lambda m: m(torch.randn(2, 2, 256), torch.randn(2, 128)), r"embedding must be \[batch, 256\]"),
])
def test_bad_inputs_are_explained(call, message):
    model = TFGridNet("tse", PAPER_SIZES["small"])
    with pytest.raises(ModelInputError, match=message):
        call(model)


def test_bad_configurations_are_explained():
    with pytest.raises(ValueError, match="unknown task 'asr'"):
        TFGridNet("asr", PAPER_SIZES["small"])
    with pytest.raises(ValueError, match="compression factor must be one of"):
        BoostedPair(TFGridNet("ss", TINY_SMALL), TFGridNet("ss", TINY_LARGE), delay=1, compression=3)
    with pytest.raises(ValueError, match="emb_dim 10 must be divisible by heads 4"):
        GridNetSize.from_dict({"emb_dim": 10, "hidden": 4, "blocks": 2, "heads": 4})


def test_whole_clip_tail_is_the_stream_going_on_with_silence():
    """The clip's last 64 samples come from one more (silent) chunk, not from dividing the last
    frame's tail by the window's near-zero end: they stay at the level of the rest."""
    torch.manual_seed(5)
    model = TFGridNet("ss", PAPER_SIZES["small"]).eval()
    audio = torch.randn(2, 2, 8 * HOP)
    with torch.inference_mode():
        out = model(audio)
    assert out[..., -64:].abs().max() <= 2 * out[..., :-64].abs().max()


@pytest.mark.parametrize("task", TASKS)
def test_warm_started_pair_begins_at_the_vanilla_small_output(task):
    """boosted_init small: the pair's small model is the trained vanilla one and the merge
    modules add nothing yet, so the pair's output is the vanilla small model's, whole and streamed."""
    torch.manual_seed(6)
    small = TFGridNet(task, TINY_SMALL).eval()
    with torch.no_grad():
        for p in small.parameters():
            p.add_(0.1 * torch.randn_like(p))  # "trained": away from the initial weights
    pair = BoostedPair(TFGridNet(task, TINY_SMALL), TFGridNet(task, TINY_LARGE), delay=2).eval()
    pair.small.load_state_dict(small.state_dict())
    for merge in pair.merges:
        merge.zero_residual()
    audio, embedding = torch.randn(1, 2, 10 * HOP), _embedding(task)
    with torch.inference_mode():
        assert torch.equal(pair(audio, embedding), small(audio, embedding))
        assert torch.equal(_stream(pair, audio, embedding), _stream(small, audio, embedding))
    pair.train()
    pair(audio, embedding).pow(2).mean().backward()
    assert all(m.attention.out_norm.weight.grad.abs().sum() > 0 for m in pair.merges)  # it can learn


def test_gradients_reach_the_large_model():
    """Joint training: the small model's loss trains the large model through the hint."""
    pair = BoostedPair(TFGridNet("se", TINY_SMALL), TFGridNet("se", TINY_LARGE), delay=1)
    pair(torch.randn(2, 2, 8 * HOP)).pow(2).mean().backward()
    assert pair.large.input_conv.conv.weight.grad.abs().sum() > 0
    assert pair.compression.conv.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_recompute_and_head_prelu_give_the_same_gradients(monkeypatch, heads):
    """Training recomputes the attention projections above layers.RECOMPUTE_ABOVE input elements
    (or on CUDA) and stores them below: both give the same output and gradients."""
    from kboost.models import layers

    torch.manual_seed(0)
    attention = layers.LocalAttention(16, heads, 4, 9, window=5, per_head=heads > 1, start="zeros")
    for prelu in (attention.query_act, attention.key_act, attention.value_act):
        prelu.weight.data.uniform_(0.1, 0.4)  # distinct slopes per head
    x = torch.randn(2, 12, 9, 16, requires_grad=True)
    calls = []
    real = layers.checkpoint
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(threshold):
        monkeypatch.setattr(layers, "RECOMPUTE_ABOVE", threshold)
        attention.zero_grad()
        x.grad = None
        y, _ = attention(x, x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return [y.detach(), x.grad.clone()] + [p.grad.clone() for p in attention.parameters()]

    stored = run(10**12)
    assert not calls
    recomputed = run(0)
    assert len(calls) == 4  # query, key, value and output projections
    for a, b in zip(stored, recomputed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # per-head PReLU as torch.where(x >= 0, x, slope * x) on [B, T, F, heads * d], head-major
    prelu, z = attention.query_act, torch.randn(2, 3, 9, heads, 4)
    expected = torch.where(z >= 0, z, prelu.weight.view(heads, 1) * z).flatten(-2)
    torch.testing.assert_close(prelu(z.flatten(-2)), expected, rtol=0, atol=0)
