"""The compiled streaming engine equals the PyTorch modules' streaming step, chunk for chunk."""
import numpy as np
import pytest
import torch
from numba import njit

from kboost import streaming
from kboost.models import HOP, PAPER_SIZES, BoostedPair, GridNetSize, ModelInputError, TFGridNet
from kboost.streamer import ENGINES, BoostedSides, HintLink, Streamer, make_streamer, stream
from kboost.streaming import compile_model
from kboost.tasks import get_task

CHUNKS = 24
# Short attention windows, so that the ring buffers wrap within the test's chunks.
SMALL = GridNetSize(emb_dim=16, hidden=16, blocks=3, window=5)
LARGE = GridNetSize(emb_dim=16, hidden=12, blocks=2, heads=2, window=7)


def _perturbed(model, seed=0):
    """Every parameter moved off its initial value (ones, zeros, equal slopes would hide
    transposed or mixed-up weights)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model.eval()


def _embedding(task):
    return torch.randn(1, 256, generator=torch.Generator().manual_seed(7)) if task == "tse" else None


def _compare(model, task, chunks=CHUNKS, seed=1):
    """Max |compiled - torch| over every output sample of a clip, relative to the largest torch
    output; both engines run the clip through the one chunk loop, ``stream``."""
    embedding = _embedding(task)
    audio = torch.randn(1, 2, chunks * HOP, generator=torch.Generator().manual_seed(seed))
    expected = stream(make_streamer(model, embedding, "torch"), audio)[0].numpy()
    got = stream(make_streamer(model, embedding, "compiled"), audio[0].numpy())
    assert got.shape == expected.shape == (get_task(task).sources, 2, chunks * HOP) and got.dtype == np.float32
    scale = float(np.abs(expected).max())
    assert scale > 1e-3  # the models produce signal, so the comparison means something
    return float(np.abs(got - expected).max()) / scale


@pytest.mark.parametrize("task", ["se", "ss", "tse"])
@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_vanilla_models_at_paper_size(task, size):
    model = _perturbed(TFGridNet(task, PAPER_SIZES[size]))
    assert _compare(model, task, chunks=12) <= 1e-5


def test_attention_ring_buffer_wraps():
    model = _perturbed(TFGridNet("ss", LARGE))
    assert _compare(model, "ss", chunks=3 * LARGE.window + 2) <= 1e-5


@pytest.mark.parametrize("delay", [0, 1, 3, 6])
@pytest.mark.parametrize("compression", [1, 2, 4])
def test_boosted_pair_ss(delay, compression):
    pair = _perturbed(BoostedPair(TFGridNet("ss", SMALL), TFGridNet("ss", LARGE), delay, compression))
    assert _compare(pair, "ss") <= 1e-5


@pytest.mark.parametrize("merge_start", ["zeros", "masked"])
def test_merge_start_settings_stream_alike(merge_start):
    """Chunks beyond the merge window, so the zero frames of the "zeros" start leave it."""
    pair = _perturbed(BoostedPair(TFGridNet("ss", SMALL), TFGridNet("ss", LARGE), 2, 1, merge_start=merge_start))
    assert _compare(pair, "ss", chunks=2 * SMALL.window + 3) <= 1e-5


@pytest.mark.parametrize("task", ["se", "tse"])
def test_boosted_pair_other_tasks(task):
    pair = _perturbed(BoostedPair(TFGridNet(task, SMALL), TFGridNet(task, LARGE), 3, 2))
    assert _compare(pair, task) <= 1e-5


def test_boosted_sides_match_the_torch_sides():
    """remote_step / deliver / device_step, called separately as a device would, give the
    hints and outputs of the PyTorch pair."""
    pair = _perturbed(BoostedPair(TFGridNet("se", SMALL), TFGridNet("se", LARGE), 2, 2))
    torch_pair, engine = make_streamer(pair, engine="torch"), make_streamer(pair, engine="compiled")
    audio = torch.randn(1, 2, 10 * HOP, generator=torch.Generator().manual_seed(3))
    torch_state, engine_state = torch_pair.initial_state(), engine.initial_state()
    with torch.inference_mode():
        for k in range(10):
            chunk = audio[..., k * HOP:(k + 1) * HOP]
            sent = torch_pair.remote_step(chunk, torch_state)
            sent_compiled = engine.remote_step(chunk[0].numpy(), engine_state)
            np.testing.assert_allclose(sent_compiled, sent[0, 0].numpy(), atol=1e-5 * max(1.0, float(sent.abs().max())))
            hint, hint_compiled = torch_pair.deliver(sent, torch_state), engine.deliver(sent_compiled, engine_state)
            assert (k < 2) == (not hint_compiled.any()) == (not hint.any())  # zeros until the first arrives
            out = torch_pair.device_step(chunk, hint, torch_state)
            out_compiled = engine.device_step(chunk[0].numpy(), hint_compiled, engine_state)
            np.testing.assert_allclose(out_compiled, out[0].numpy(), atol=1e-5 * max(1.0, float(out.abs().max())))


@pytest.mark.parametrize("engine", ENGINES)
def test_both_engines_keep_one_contract(engine):
    """Either engine is a Streamer; ``stream`` returns every input sample (any length), aligned,
    and times the device side of a boosted pair on its own."""
    pair = _perturbed(BoostedPair(TFGridNet("tse", SMALL), TFGridNet("tse", LARGE), 1))
    embedding = _embedding("tse")
    streamer = make_streamer(pair, embedding, engine)
    assert isinstance(streamer, Streamer) and isinstance(streamer, BoostedSides)
    audio = 0.1 * torch.randn(1, 2, 5 * HOP + 37, generator=torch.Generator().manual_seed(4))
    timing = {}
    out = stream(streamer, audio if engine == "torch" else audio[0].numpy(), timing)
    assert tuple(out.shape[-3:]) == (1, 2, 5 * HOP + 37)
    assert 0 < timing["device"] < timing["total"]
    vanilla = make_streamer(pair.small, embedding, engine)
    assert isinstance(vanilla, Streamer) and not isinstance(vanilla, BoostedSides)


def test_the_hint_link_delays_every_hint_in_order():
    link, in_flight = HintLink(2), []
    arrived = [link.deliver(np.full(3, k, np.float32), in_flight) for k in range(1, 6)]
    assert [float(a[0]) for a in arrived] == [0, 0, 1, 2, 3]
    assert torch.equal(HintLink(0).deliver(torch.ones(2), []), torch.ones(2))
    with pytest.raises(ValueError, match="delay must be >= 0"):
        HintLink(-1)


def test_engine_copies_the_weights():
    """The engine is a snapshot: training the modules afterwards does not change it."""
    model = _perturbed(TFGridNet("se", SMALL))
    engine = compile_model(model)
    chunk = np.random.default_rng(0).standard_normal((2, HOP)).astype(np.float32)
    before = engine.step(chunk, engine.initial_state())
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    np.testing.assert_array_equal(engine.step(chunk, engine.initial_state()), before)


def test_bad_input_is_a_clear_error():
    engine = compile_model(TFGridNet("se", SMALL).eval())
    state = engine.initial_state()
    with pytest.raises(ModelInputError, match="a streaming chunk is \\[2, 128\\]"):
        engine.step(np.zeros((2, 127), np.float32), state)
    with pytest.raises(ModelInputError, match="a streaming chunk is \\[2, 128\\]"):
        engine.step(np.zeros((1, 128), np.float32), state)
    tse = TFGridNet("tse", SMALL).eval()
    with pytest.raises(ModelInputError, match="needs the target speaker"):
        compile_model(tse)
    with pytest.raises(ModelInputError, match="256 values, got 128"):
        compile_model(tse, np.zeros(128, np.float32))
    with pytest.raises(TypeError, match="expected TFGridNet or BoostedPair"):
        compile_model(torch.nn.Linear(2, 2))


@njit
def _apply(kind, x, out):
    for i in range(x.shape[0]):
        if kind == 0:
            out[i] = streaming._exp(x[i])
        elif kind == 1:
            out[i] = streaming._sigmoid(x[i])
        else:
            out[i] = streaming._tanh(x[i])


def test_vectorisable_nonlinearities_are_accurate():
    """The hand-written exp / sigmoid / tanh (no libm calls, so loops vectorise) agree with
    float64 references to float32 rounding, saturate correctly and pass NaN through."""
    x = np.linspace(-100, 100, 400_001, dtype=np.float32)
    ref = x.astype(np.float64)
    out = np.empty_like(x)
    _apply(0, x, out)
    inside = (ref >= -87) & (ref <= 88)  # float32's normal range; below it the result is ~1e-38
    assert np.max(np.abs(out[inside] - np.exp(ref[inside])) / np.exp(ref[inside])) < 2e-7
    assert np.all(out[ref < -87] < 2e-38)
    _apply(1, x, out)
    assert np.max(np.abs(out - 1 / (1 + np.exp(-ref)))) < 1e-7
    _apply(2, x, out)
    assert np.max(np.abs(out - np.tanh(ref))) < 3e-7  # ~2 float32 ulps of 1
    assert out[0] == -1.0 and out[-1] == 1.0
    nan = np.array([np.nan], np.float32)
    for kind in range(3):
        _apply(kind, nan, out[:1])
        assert np.isnan(out[0])


def test_poisoned_remote_input_reaches_the_device_only_after_the_delay():
    """NaN in what the large model hears from chunk k on: the small model's output stays finite
    and equal to the clean run before chunk k + delay, and turns non-finite once hints arrive."""
    delay, poisoned_from, chunks = 3, 4, 12
    pair = _perturbed(BoostedPair(TFGridNet("ss", SMALL), TFGridNet("ss", LARGE), delay, 1))
    engine = compile_model(pair)
    audio = np.random.default_rng(5).standard_normal((2, chunks * HOP)).astype(np.float32)
    poison = audio.copy()
    poison[:, poisoned_from * HOP:] = np.nan
    clean_state, poisoned_state = engine.initial_state(), engine.initial_state()
    for k in range(chunks):
        chunk = audio[:, k * HOP:(k + 1) * HOP]
        clean = engine.step(chunk, clean_state)
        out = engine.step(chunk, poisoned_state, large_chunk=poison[:, k * HOP:(k + 1) * HOP])
        if k < poisoned_from + delay:
            np.testing.assert_array_equal(out, clean)
        else:
            assert not np.isfinite(out).all()
