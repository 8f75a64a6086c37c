"""kboost.models.fast_lstm: the CPU LSTM kernels against torch.nn.LSTM.

Values and gradients (input, every weight and bias of each direction, initial state) must
equal torch's autograd through nn.LSTM to 1e-5 relative (max abs difference / max abs of the
reference), for one-layer unidirectional and bidirectional LSTMs of every profile's sizes.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kboost.models import fast_lstm
from kboost.models.fast_lstm import FastLSTM, applies, lstm, lstm_forward, set_enabled

TOL = 1e-5
PROFILE_SIZES = [(8, 8), (12, 8), (16, 16), (26, 18), (32, 32), (64, 64)]  # (D, H) of every profile


@pytest.fixture(autouse=True)
def _switch_reset():
    set_enabled(None)
    yield
    set_enabled(None)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def pair(d, h, bidirectional, seed=0):
    torch.manual_seed(seed)
    ref = nn.LSTM(d, h, batch_first=True, bidirectional=bidirectional)
    fast = FastLSTM(d, h, batch_first=True, bidirectional=bidirectional)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def run(module, x, state, weights_out, weights_state):
    """Output, final state and the gradients of a loss that uses all three."""
    x = x.clone().requires_grad_()
    hx = None
    if state is not None:
        hx = tuple(s.clone().requires_grad_() for s in state)
    y, (h_n, c_n) = module(x, hx)
    loss = (y * weights_out).sum() + (h_n * weights_state[0]).sum() + (c_n * weights_state[1]).sum()
    module.zero_grad()
    loss.backward()
    grads = [x.grad] + ([s.grad for s in hx] if hx is not None else []) + [p.grad for p in module.parameters()]
    return [y, h_n, c_n] + grads


def compare(d, h, bidirectional, n, steps, with_state, seed=0):
    ref, fast = pair(d, h, bidirectional, seed)
    dirs = 2 if bidirectional else 1
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, steps, d, generator=g)
    state = (0.5 * torch.randn(dirs, n, h, generator=g), torch.randn(dirs, n, h, generator=g)) if with_state else None
    w_out = torch.randn(n, steps, dirs * h, generator=g)
    w_state = (torch.randn(dirs, n, h, generator=g), torch.randn(dirs, n, h, generator=g))
    expected = run(ref, x, state, w_out, w_state)
    got = run(fast, x, state, w_out, w_state)
    names = ["output", "h_n", "c_n", "dx"] + (["dh0", "dc0"] if with_state else []) \
        + [f"d{name}" for name, _ in ref.named_parameters()]
    assert len(got) == len(expected) == len(names)
    for name, a, b in zip(names, got, expected):
        assert a.shape == b.shape, name
        assert rel(a, b) <= TOL, f"{name}: {rel(a, b):.2e} (D={d} H={h} bi={bidirectional} N={n} L={steps})"


class _Spy:
    """Counts the fast path's calls and records whether each kept tensors for a backward."""

    def __init__(self, monkeypatch):
        self.calls = 0
        self.saves = []
        original = fast_lstm.FastLSTMFunction.apply

        def apply(*args):
            self.calls += 1
            self.saves.append(args[4])
            return original(*args)
        monkeypatch.setattr(fast_lstm.FastLSTMFunction, "apply", apply)


@pytest.mark.parametrize("d,h", PROFILE_SIZES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_torch_profile_sizes(d, h, bidirectional):
    for n, steps, with_state in [(1, 1, True), (5, 7, False), (37, 97, True)]:
        compare(d, h, bidirectional, n, steps, with_state)


@pytest.mark.parametrize("d,h,n,steps", [(5, 3, 3, 9), (17, 33, 20, 5), (3, 20, 17, 16), (40, 4, 33, 33)])
def test_matches_torch_odd_sizes(d, h, n, steps):
    """Sizes that are not whole vector tiles, lengths around the backward's step groups."""
    for bidirectional in (False, True):
        compare(d, h, bidirectional, n, steps, with_state=True, seed=n)


def test_gradients_through_the_final_state_only_and_partial_outputs():
    ref, fast = pair(16, 16, True)
    x = torch.randn(9, 11, 16)
    for loss_of in (lambda y, s: s[0].sum() * 2 + s[1].mean(), lambda y, s: y[:, 3:5, 7].sum()):
        grads = []
        for module in (ref, fast):
            xx = x.clone().requires_grad_()
            y, s = module(xx)
            module.zero_grad()
            loss_of(y, s).backward()
            grads.append([xx.grad] + [p.grad for p in module.parameters()])
        for a, b in zip(*grads[::-1]):
            assert rel(a, b) <= TOL


def test_functional_forms_and_reverse():
    ref, _ = pair(12, 8, True)
    x = torch.randn(6, 10, 12)
    y_ref, (h_ref, c_ref) = ref(x)
    weights = tuple(ref._flat_weights)
    y, (h_n, c_n) = lstm(x, weights)
    assert rel(y, y_ref) <= TOL and rel(h_n, h_ref) <= TOL and rel(c_n, c_ref) <= TOL
    # the reverse direction alone is a unidirectional LSTM run backwards in time
    y_rev, (h_rev, _) = lstm_forward(x, *weights[4:], reverse=True)
    assert rel(y_rev, y_ref[..., 8:]) <= TOL and rel(h_rev[0], h_ref[1]) <= TOL
    y_fwd, _ = lstm_forward(x, *weights[:4], h0=torch.zeros(1, 6, 8), c0=torch.zeros(1, 6, 8))
    assert rel(y_fwd, y_ref[..., :8]) <= TOL


def test_state_dict_is_nn_lstm_s():
    ref, fast = pair(26, 18, True)
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in ref.named_parameters()]
    other = nn.LSTM(26, 18, batch_first=True, bidirectional=True)
    other.load_state_dict(fast.state_dict())
    for a, b in zip(other.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    plain = nn.LSTM(8, 8, batch_first=True)
    model = FastLSTM(8, 8, batch_first=True)
    model.load_state_dict(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))


def test_inference_keeps_nothing_and_matches(monkeypatch):
    spy = _Spy(monkeypatch)
    ref, fast = pair(16, 16, True)
    x = torch.randn(20, 13, 16)
    expected, _ = ref(x)
    with torch.no_grad():
        y, (h_n, _) = fast(x)
    assert y.grad_fn is None and rel(y, expected) <= TOL
    with torch.inference_mode():
        y2, _ = fast(x)
    assert rel(y2, expected) <= TOL
    y3, _ = fast(x)  # parameters require gradients: training
    assert y3.grad_fn is not None
    assert spy.saves == [False, False, True]


def test_non_contiguous_input_and_threads():
    ref, fast = pair(16, 16, False)
    base = torch.randn(13, 40, 16)
    x = base.transpose(0, 1)[:, ::2]  # [40, 7, 16], not contiguous
    expected, _ = ref(x)
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            y, _ = fast(x)
            assert rel(y, expected) <= TOL
    finally:
        torch.set_num_threads(threads)


def test_weight_gradients_are_the_same_bits_whatever_the_threads():
    """The backward's weight-gradient sums go by fixed ranges of blocks, added in order: one
    thread and two give the same bits, run after run (per-thread sums would not)."""
    _, fast = pair(16, 16, True)
    x = torch.randn(20 * 16 + 5, 30, 16)  # 21 blocks: ranges of 2 and 3
    d_y = torch.randn(x.shape[0], 30, 32)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n_threads in (1, 2, 2, 2):
            torch.set_num_threads(n_threads)
            fast.zero_grad()
            y, _ = fast(x.clone().requires_grad_())
            y.backward(d_y)
            grads.append([p.grad.clone() for p in fast.parameters()])
    finally:
        torch.set_num_threads(threads)
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))


def test_switch_and_environment_fall_back_to_torch(monkeypatch):
    spy = _Spy(monkeypatch)
    ref, fast = pair(8, 8, True)
    x = torch.randn(4, 5, 8)
    fast(x)
    assert spy.calls == 1
    set_enabled(False)
    y, _ = fast(x)
    assert spy.calls == 1 and torch.allclose(y, ref(x)[0])
    set_enabled(None)
    monkeypatch.setenv("KBOOST_FAST_LSTM", "0")
    fast(x)
    assert spy.calls == 1
    monkeypatch.setenv("KBOOST_FAST_LSTM", "1")
    fast(x)
    assert spy.calls == 2
    set_enabled(True)
    monkeypatch.setenv("KBOOST_FAST_LSTM", "0")
    fast(x)
    assert spy.calls == 3  # set_enabled wins over the environment


def test_unsupported_configurations_fall_back(monkeypatch):
    spy = _Spy(monkeypatch)
    x = torch.randn(3, 4, 8)
    cases = [
        (FastLSTM(8, 8, batch_first=False), x),
        (FastLSTM(8, 8, num_layers=2, batch_first=True), x),
        (FastLSTM(8, 8, batch_first=True, bias=False), x),
        (FastLSTM(8, 8, batch_first=True, proj_size=4), x),
        (FastLSTM(8, 8, batch_first=True).double(), x.double()),
        (FastLSTM(8, 8, batch_first=True), x[0]),  # unbatched
    ]
    for module, inp in cases:
        assert not applies(module, inp)
        reference = nn.LSTM(8, 8, batch_first=module.batch_first, num_layers=module.num_layers, bias=module.bias,
                            proj_size=module.proj_size).to(inp.dtype)
        reference.load_state_dict(module.state_dict())
        assert torch.allclose(module(inp)[0], reference(inp)[0])
    assert spy.calls == 0
    fast = FastLSTM(8, 8, batch_first=True)
    assert applies(fast, x) and not applies(fast, x, (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)))
    with pytest.raises(RuntimeError):
        fast(x, (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)))  # wrong state shape: nn.LSTM's error


@pytest.mark.parametrize("task, size", [("ss", "small"), ("ss", "medium"), ("tse", "small"), ("se", "large")])
def test_a_whole_training_step_equals_the_torch_path(task, size):
    """The models use FastLSTM (intra-frame BiLSTM, inter-frame LSTM): one loss-and-gradient step
    of each demo-size model equals torch's own LSTM path. Both are float32, so each is measured
    against the float64 step (torch's path in float64)."""
    import copy
    from pathlib import Path

    import yaml

    from kboost.models import GridNetSize, TFGridNet
    from kboost.objectives import negative_si_sdr

    demo = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["profiles"]["demo"]
    torch.manual_seed(0)
    model = TFGridNet(task, GridNetSize.from_dict(demo["models"][size]))
    audio = 0.1 * torch.randn(2, 2, 32 * 128)
    targets = 0.1 * torch.randn(2, 2 if task == "ss" else 1, 2, 32 * 128)
    embedding = torch.randn(2, 256) if task == "tse" else None

    def step(net, dtype, fast):
        set_enabled(fast)
        net.zero_grad()
        emb = None if embedding is None else embedding.to(dtype)
        loss = negative_si_sdr(net(audio.to(dtype), emb), targets.to(dtype), permutation_invariant=task == "ss")
        loss.backward()
        return float(loss), {n: p.grad.double() for n, p in net.named_parameters()}

    try:
        loss64, exact = step(copy.deepcopy(model).double(), torch.float64, False)
        loss_torch, torch32 = step(model, torch.float32, False)
        loss_fast, fast32 = step(model, torch.float32, True)
    finally:
        set_enabled(None)
    assert abs(loss_fast - loss64) <= 2 * abs(loss_torch - loss64) + 1e-6 * abs(loss64)
    largest = max(g.abs().max() for g in exact.values())
    for name, grad in exact.items():
        # Every element within 1e-5 of the largest gradient; every tensor as close to float64
        # as torch's float32 path is (measured: within 1.6x), or within 1e-5 of its own norm.
        assert (fast32[name] - grad).abs().max() <= 1e-5 * largest, name
        torch_error, fast_error = (torch32[name] - grad).norm(), (fast32[name] - grad).norm()
        assert fast_error <= 2 * torch_error + 1e-5 * grad.norm(), (name, float(fast_error), float(torch_error))
