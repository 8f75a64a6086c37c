"""Hint codecs: what the device receives when hints are quantised, and what they cost to send."""
import numpy as np
import pytest
import torch

from kboost.hint_codec import CODECS, get_codec
from kboost.models import HOP, N_FREQS, BoostedPair, GridNetSize, TFGridNet
from kboost.streamer import HintLink, make_streamer, stream

SMALL = GridNetSize(emb_dim=16, hidden=16, blocks=2, window=5)
LARGE = GridNetSize(emb_dim=16, hidden=12, blocks=2, heads=2, window=7)


def _hints(seed=0, frames=5, channels=4):
    """[1, frames, F, C] hints whose frames differ in scale by orders of magnitude."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, frames, N_FREQS, channels)).astype(np.float32)
    return x * np.logspace(-3, 1, frames, dtype=np.float32)[None, :, None, None]


@pytest.mark.parametrize("name,bits", [("int8", 8), ("int4", 4)])
def test_integer_codecs_round_to_the_nearest_level_of_each_frame(name, bits):
    codec, x = get_codec(name), _hints()
    y = codec(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    levels = 2 ** (bits - 1) - 1
    step = np.abs(x).max(axis=(-2, -1), keepdims=True) / levels   # per frame, not per clip
    assert np.all(np.abs(y - x) <= step / 2 * (1 + 1e-5))
    used = np.unique(np.rint(y / step))
    assert used.min() >= -levels and used.max() <= levels and len(used) > levels  # the whole range in use
    # Each frame is scaled on its own: a louder neighbour does not coarsen a quiet frame.
    louder = x.copy()
    louder[:, -1] *= 1000
    np.testing.assert_array_equal(codec(louder)[:, :-1], y[:, :-1])


def test_frames_quantise_the_same_streamed_one_by_one_or_whole():
    """Per-frame scaling looks at no other frame, so the link stays causal."""
    x = torch.from_numpy(_hints(1))
    for codec in CODECS.values():
        whole = codec(x)
        one_by_one = torch.cat([codec(x[:, t:t + 1]) for t in range(x.shape[1])], dim=1)
        assert torch.equal(whole, one_by_one)


def test_numpy_and_torch_hints_get_the_same_values():
    x = _hints(2)
    for codec in CODECS.values():
        np.testing.assert_array_equal(codec(torch.from_numpy(x)).numpy(), codec(x))
        np.testing.assert_array_equal(codec(x[0, 0]), codec(x)[0, 0])   # the compiled engine's [F, C] hint


def test_float_codecs_and_silence():
    x = _hints(3)
    assert CODECS["float32"](x) is x
    np.testing.assert_array_equal(CODECS["float16"](x), x.astype(np.float16).astype(np.float32))
    for codec in CODECS.values():
        np.testing.assert_array_equal(codec(np.zeros((N_FREQS, 4), np.float32)), 0)  # no 0/0


def test_bits_on_the_link():
    values = N_FREQS * 4  # SE at P = 1: 2 ears x (real, imag)
    assert get_codec("float32").bits_per_hint(values) == values * 32
    assert get_codec("int8").bits_per_hint(values) == values * 8 + 32   # + the frame's float32 scale
    assert get_codec("float32").kbit_per_second(values, 125) == values * 32 * 125 / 1000
    with pytest.raises(ValueError, match="unknown hint codec 'int2'; allowed: float32, float16, int8, int4"):
        get_codec("int2")


def test_the_link_delivers_what_the_codec_lets_through():
    link, in_flight, codec = HintLink(1, get_codec("int4")), [], get_codec("int4")
    sent = [torch.from_numpy(_hints(k)[:, :1]) for k in range(3)]
    arrived = [link.deliver(s, in_flight) for s in sent]
    assert torch.equal(arrived[0], torch.zeros_like(sent[0]))
    assert torch.equal(arrived[1], codec(sent[0])) and torch.equal(arrived[2], codec(sent[1]))


@pytest.mark.parametrize("engine", ["torch", "compiled"])
def test_a_streamed_pair_hears_the_quantised_hints(engine):
    torch.manual_seed(0)
    pair = BoostedPair(TFGridNet("se", SMALL), TFGridNet("se", LARGE), delay=1).eval()
    with torch.no_grad():  # the merge modules start as a zero residual: give the hints a say
        for p in pair.merges.parameters():
            p.add_(0.1 * torch.randn_like(p))
    audio = 0.1 * torch.randn(1, 2, 6 * HOP, generator=torch.Generator().manual_seed(1))
    clip = audio if engine == "torch" else audio[0].numpy()
    outputs = {name: np.asarray(stream(make_streamer(pair, engine=engine, hint_codec=get_codec(name)), clip))
               for name in ("float32", "float16", "int8", "int4")}
    np.testing.assert_array_equal(outputs["float32"], np.asarray(stream(make_streamer(pair, engine=engine), clip)))
    error = {name: float(np.abs(out - outputs["float32"]).max()) for name, out in outputs.items()}
    assert 0 < error["float16"] < error["int8"] < error["int4"]   # coarser hints, further from the trained output
    with pytest.raises(ValueError, match="a hint codec needs a boosted pair"):
        make_streamer(pair.small, engine=engine, hint_codec=get_codec("int8"))


def test_params_allow_exactly_the_codecs_other_than_float32():
    from kboost.hint_codec import CODECS
    from kboost.params import HINT_CODECS

    assert set(HINT_CODECS) == set(CODECS) - {"float32"}
