"""Compiled streaming inference: one 8 ms chunk through a trained model at device speed.

The PyTorch modules in ``kboost.models`` define the models and run training and evaluation.
Per 8 ms chunk, though, they issue a few hundred tiny tensor operations whose dispatch costs
more than their arithmetic (1-2 ms per chunk for the small model on one core). This module
exports the same weights into flat float32 arrays and runs a whole chunk in one call of a
numba-compiled function (STFT as DFT matrices, convolutions, LSTMs, attention, overlap-add)
with all state in preallocated arrays. It is an inference runtime for the models, not a second
definition of them: tests require it to match ``TFGridNet.step`` / ``BoostedPair.step`` chunk
for chunk.

    engine = compile_model(model, embedding)        # TFGridNet or BoostedPair, eval weights
    state = engine.initial_state()
    out = engine.step(chunk, state)                 # chunk [2, 128] -> [sources, 2, 128]

The engines implement :class:`kboost.streamer.Streamer` (``kboost.streamer.stream`` runs a whole
clip); a boosted pair also has ``remote_step`` / ``deliver`` / ``device_step`` so the device side
can be timed alone. Batch 1 only: a device streams one input.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .models import HOP, LOOKAHEAD, N_FREQS, BoostedPair, TFGridNet
from .models.gridnet import EMBEDDING_DIM, MICS, ModelInputError
from .streamer import BoostedSides, HintLink
from .tasks import get_task

N_FFT = HOP + LOOKAHEAD
# Exact-IEEE NaN/inf handling is kept; only reassociation and contraction (FMA) are allowed, so
# the loops vectorise and the results stay within float32 rounding of PyTorch's.
_FAST = {"reassoc", "contract", "nsz", "arcp"}
_jit = njit(cache=True, fastmath=_FAST, nogil=True, error_model="numpy")
_inline = njit(cache=True, fastmath=_FAST, nogil=True, error_model="numpy", inline="always")  # elementwise helpers


# ------------------------------------------------------------------------ exported weights
class FrontEnd(NamedTuple):
    analysis_re: np.ndarray   # [192, F]: windowed DFT, real part
    analysis_im: np.ndarray   # [192, F]: imaginary part
    synthesis_re: np.ndarray  # [F, 192]: inverse real DFT of the real parts, times the window
    synthesis_im: np.ndarray  # [F, 192]
    envelope: np.ndarray      # [128]: overlap-add normalisation of one output block


class Conv(NamedTuple):
    """3x3 causal convolution over [3 frames, F, C_in] (oldest frame first) -> [F, C_out]."""
    weight: np.ndarray  # [3 (time), 3 (freq), C_in, C_out]
    bias: np.ndarray    # [C_out]


class Blocks(NamedTuple):
    """The GridNet blocks' LSTM parts, stacked over blocks (leading axis)."""
    intra_norm_w: np.ndarray  # [B, D]
    intra_norm_b: np.ndarray
    intra_wih: np.ndarray     # [B, 2 directions, D, 4H] (transposed: rows are input features)
    intra_whh: np.ndarray     # [B, 2, H, 4H]
    intra_bias: np.ndarray    # [B, 2, 4H] (b_ih + b_hh)
    intra_proj_w: np.ndarray  # [B, 2H, D]
    intra_proj_b: np.ndarray  # [B, D]
    inter_norm_w: np.ndarray
    inter_norm_b: np.ndarray
    inter_wih: np.ndarray     # [B, D, 4H]
    inter_whh: np.ndarray     # [B, H, 4H]
    inter_bias: np.ndarray    # [B, 4H]
    inter_proj_w: np.ndarray  # [B, H, D]
    inter_proj_b: np.ndarray  # [B, D]


class Attention(NamedTuple):
    """Local attention layers, stacked (leading axis L; L = 0 when a model has none)."""
    query_w: np.ndarray       # [L, D, heads * E]
    query_b: np.ndarray       # [L, heads * E]
    key_w: np.ndarray
    key_b: np.ndarray
    value_w: np.ndarray       # [L, D, D]
    value_b: np.ndarray
    slopes: np.ndarray        # [L, 3, heads]: PReLU slopes of query, key, value
    query_norm_w: np.ndarray  # [L, heads, F * E]
    query_norm_b: np.ndarray
    key_norm_w: np.ndarray
    key_norm_b: np.ndarray
    value_norm_w: np.ndarray  # [L, heads, F * D / heads]
    value_norm_b: np.ndarray
    out_w: np.ndarray         # [L, D, D]
    out_b: np.ndarray         # [L, D]
    out_slope: np.ndarray     # [L]
    out_norm_w: np.ndarray    # [L, F, D]
    out_norm_b: np.ndarray


class Merges(NamedTuple):
    """The boosted small model's merge modules (M = blocks - 1; M = 0 for a vanilla model)."""
    scale_w: np.ndarray  # [M, C_hint, D]
    scale_b: np.ndarray  # [M, D]
    shift_w: np.ndarray
    shift_b: np.ndarray
    attention: Attention


class Net(NamedTuple):
    """One TF-GridNet, ready to stream."""
    front: FrontEnd
    input_conv: Conv
    input_norm_w: np.ndarray  # [D]
    input_norm_b: np.ndarray
    blocks: Blocks
    attention: Attention      # one layer per block, or none
    condition_scale: np.ndarray  # [B - 1, F, D]: TSE speaker conditioning for this embedding
    condition_shift: np.ndarray  # (leading axis 0 for SE / SS)
    output_conv: Conv


class AttentionState(NamedTuple):
    keys: np.ndarray    # [L, heads, window, F * E] ring buffer
    values: np.ndarray  # [L, heads, window, F * D / heads]
    seen: np.ndarray    # [L] int64: frames written so far; a zero-start layer (LocalAttention.start
                        # "zeros") begins at window - 1: its window starts full of zero frames


class NetState(NamedTuple):
    history: np.ndarray     # [2, 64] last input samples (the analysis window's overlap)
    input_hist: np.ndarray  # [3, F, 4] STFT features of this and the two past frames
    lstm_h: np.ndarray      # [B, F, H] inter-frame LSTM state
    lstm_c: np.ndarray
    attention: AttentionState
    output_hist: np.ndarray  # [3, F, D] features entering the output convolution
    tail: np.ndarray         # [n_out, 64] overlap-add tail of the previous frame
    spec: np.ndarray         # [F, 2 n_out] this frame's output spectrogram (read by the compression)


class MergeState(NamedTuple):
    past: np.ndarray  # [M, delay, F, D] ring buffer of the small features awaiting their hint
    seen: np.ndarray  # [1] int64: frames written
    attention: AttentionState


# ------------------------------------------------------------------------------- kernels
@intrinsic
def _float_from_bits(typingctx, bits):
    """Reinterpret an int32 as float32 (a bit cast; vectorises, unlike a memory view)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 split so that k * _LN2_HI is exact (Cody-Waite)
_LN2_LO = np.float32(-2.12194440e-4)


@_inline
def _exp(x):
    """exp for float32 without a libm call, so loops over it vectorise: 2^k * e^r with
    |r| <= ln2 / 2 and a degree-7 Taylor polynomial (error below 1e-8 relative)."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    y = x * _LOG2E
    n = np.int32(y + (np.float32(0.5) if y >= 0 else np.float32(-0.5)))  # round to nearest, branch-free
    k = np.float32(n)
    r = x - k * _LN2_HI - k * _LN2_LO
    p = np.float32(1.0 / 5040) + r * np.float32(1.0 / 40320)
    p = np.float32(1.0 / 720) + r * p
    p = np.float32(1.0 / 120) + r * p
    p = np.float32(1.0 / 24) + r * p
    p = np.float32(1.0 / 6) + r * p
    p = np.float32(0.5) + r * p
    p = np.float32(1.0) + r * p
    p = np.float32(1.0) + r * p
    return p * _float_from_bits((n + np.int32(127)) << np.int32(23))


@_inline
def _sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + _exp(-x))


@_inline
def _tanh(x):
    # 1 - 2 / (1 + e^2x): absolute error ~1e-7 near 0, exact saturation at +-1.
    return np.float32(1.0) - np.float32(2.0) / (np.float32(1.0) + _exp(np.float32(2.0) * x))


@_jit
def _linear(x, w, b, out):
    """out = x @ w + b for x [R, K], w [K, N] (BLAS: far faster than loops at these sizes)."""
    np.dot(x, w, out)
    out += b


@_jit
def _linear_add(x, w, b, out):
    """out += x @ w + b (a residual connection)."""
    update = np.empty_like(out)
    np.dot(x, w, update)
    out += update
    out += b


@_jit
def _layer_norm_rows(x, w, b, out):
    """LayerNorm over the last axis of x [R, D] (eps 1e-5, as nn.LayerNorm)."""
    rows, dim = x.shape
    for r in range(rows):
        mean = np.float32(0.0)
        for d in range(dim):
            mean += x[r, d]
        mean /= dim
        var = np.float32(0.0)
        for d in range(dim):
            var += (x[r, d] - mean) ** 2
        inv = np.float32(1.0) / math.sqrt(var / dim + np.float32(1e-5))
        for d in range(dim):
            out[r, d] = (x[r, d] - mean) * inv * w[d] + b[d]


@_jit
def _normalise(x, w, b):
    """In place: LayerNorm of a flat vector x over all its elements, gains w and biases b."""
    size = x.shape[0]
    mean = np.float32(0.0)
    for i in range(size):
        mean += x[i]
    mean /= size
    var = np.float32(0.0)
    for i in range(size):
        var += (x[i] - mean) ** 2
    inv = np.float32(1.0) / math.sqrt(var / size + np.float32(1e-5))
    for i in range(size):
        x[i] = (x[i] - mean) * inv * w[i] + b[i]


@_jit
def _conv(hist, conv, out):
    """3x3 convolution with frequency padding 1 over hist [3, F, C_in] -> out [F, C_out]:
    the 9 shifted copies of the input side by side (im2col), then one matrix product."""
    _, freqs, channels = hist.shape
    patches = np.zeros((freqs, 3, 3, channels), dtype=np.float32)
    for kt in range(3):
        patches[1:, kt, 0] = hist[kt, :-1]  # kf = 0 reads frequency f - 1
        patches[:, kt, 1] = hist[kt]
        patches[:-1, kt, 2] = hist[kt, 1:]
    weight = conv.weight.reshape(9 * channels, conv.weight.shape[3])
    _linear(patches.reshape(freqs, 9 * channels), weight, conv.bias, out)


@_jit
def _push_frame(hist, frame):
    """Shift the 3-frame history one frame older and put ``frame`` [F, C] last."""
    hist[0] = hist[1]
    hist[1] = hist[2]
    hist[2] = frame


@_jit
def _lstm_cells(gates, h, c):
    """The LSTM nonlinearities (gate order i, f, g, o, as PyTorch) on gates [4H]: update the
    cell state c and the output h [H] in place."""
    hidden = h.shape[0]
    for j in range(hidden):
        i = _sigmoid(gates[j])
        f = _sigmoid(gates[hidden + j])
        g = _tanh(gates[2 * hidden + j])
        o = _sigmoid(gates[3 * hidden + j])
        c[j] = f * c[j] + i * g
        h[j] = o * _tanh(c[j])


@_jit
def _bilstm(x, wih, whh, bias, out):
    """Bidirectional LSTM over the rows of x [F, D] from zero state -> out [F, 2H]. The two
    directions are independent chains, stepped together so their latencies overlap."""
    freqs = x.shape[0]
    hidden = whh.shape[1]
    forward = np.empty((freqs, 4 * hidden), dtype=np.float32)
    backward = np.empty((freqs, 4 * hidden), dtype=np.float32)
    _linear(x, wih[0], bias[0], forward)
    _linear(x, wih[1], bias[1], backward)
    h_fwd, c_fwd = np.zeros(hidden, dtype=np.float32), np.zeros(hidden, dtype=np.float32)
    h_bwd, c_bwd = np.zeros(hidden, dtype=np.float32), np.zeros(hidden, dtype=np.float32)
    w_fwd, w_bwd = whh[0], whh[1]
    for step in range(freqs):
        back = freqs - 1 - step
        row_fwd, row_bwd = forward[step], backward[back]
        for k in range(hidden):
            v_fwd, v_bwd = h_fwd[k], h_bwd[k]
            for j in range(4 * hidden):
                row_fwd[j] += v_fwd * w_fwd[k, j]
                row_bwd[j] += v_bwd * w_bwd[k, j]
        _lstm_cells(row_fwd, h_fwd, c_fwd)
        _lstm_cells(row_bwd, h_bwd, c_bwd)
        out[step, :hidden] = h_fwd
        out[back, hidden:] = h_bwd


@_jit
def _heads(x, w, b, slopes, norm_w, norm_b, dim, out):
    """Project x [F, D] -> [F, heads * dim], then per head PReLU and LayerNorm over (F, dim),
    flattened into out [heads, F * dim]."""
    freqs = x.shape[0]
    heads = out.shape[0]
    projected = np.empty((freqs, w.shape[1]), dtype=np.float32)
    _linear(x, w, b, projected)
    for hd in range(heads):
        slope = slopes[hd]
        for f in range(freqs):
            for e in range(dim):
                value = projected[f, hd * dim + e]
                out[hd, f * dim + e] = value if value >= 0 else slope * value
        _normalise(out[hd], norm_w[hd], norm_b[hd])


@_jit
def _attention(layer, x, context, weights, state, out):
    """One streaming frame of local attention: queries from x [F, D], keys and values from
    context [F, D], appended to the layer's ring buffer. Writes out [F, D] (not yet added)."""
    freqs, dim = x.shape
    heads = weights.slopes.shape[2]
    qk = weights.query_w.shape[2] // heads
    v_dim = dim // heads
    window = state.keys.shape[2]
    slot = state.seen[layer] % window
    valid = min(state.seen[layer] + 1, window)
    state.seen[layer] += 1

    query = np.empty((heads, freqs * qk), dtype=np.float32)
    slopes = weights.slopes[layer]
    _heads(x, weights.query_w[layer], weights.query_b[layer], slopes[0], weights.query_norm_w[layer],
           weights.query_norm_b[layer], qk, query)
    _heads(context, weights.key_w[layer], weights.key_b[layer], slopes[1], weights.key_norm_w[layer],
           weights.key_norm_b[layer], qk, state.keys[layer, :, slot])
    _heads(context, weights.value_w[layer], weights.value_b[layer], slopes[2], weights.value_norm_w[layer],
           weights.value_norm_b[layer], v_dim, state.values[layer, :, slot])

    # Scores against the valid ring-buffer slots, softmax, weighted sum of their values.
    mixed = np.empty((heads, freqs * v_dim), dtype=np.float32)
    scores = np.empty(valid, dtype=np.float32)
    keys, values = state.keys[layer], state.values[layer]
    scale = np.float32(1.0 / math.sqrt(freqs * qk))
    for hd in range(heads):
        np.dot(keys[hd][:valid], query[hd], scores)
        scores *= scale
        top = scores.max()
        for s in range(valid):
            scores[s] = _exp(scores[s] - top)
        scores /= scores.sum()
        np.dot(scores, values[hd][:valid], mixed[hd])
    merged = np.empty((freqs, dim), dtype=np.float32)  # heads back side by side: [F, heads * v]
    for hd in range(heads):
        for f in range(freqs):
            for e in range(v_dim):
                merged[f, hd * v_dim + e] = mixed[hd, f * v_dim + e]
    _linear(merged, weights.out_w[layer], weights.out_b[layer], out)
    slope = weights.out_slope[layer]
    flat = out.reshape(freqs * dim)
    for i in range(freqs * dim):
        if flat[i] < 0:
            flat[i] *= slope
    _normalise(flat, weights.out_norm_w[layer].reshape(freqs * dim), weights.out_norm_b[layer].reshape(freqs * dim))


@_jit
def _analyse(chunk, front, state):
    """New input chunk [2, 128] -> this frame's STFT features, pushed into state.input_hist."""
    freqs = front.analysis_re.shape[1]
    frame = np.empty((MICS, N_FFT), dtype=np.float32)
    frame[:, :LOOKAHEAD] = state.history
    frame[:, LOOKAHEAD:] = chunk
    state.history[:] = frame[:, N_FFT - LOOKAHEAD:]
    real = np.empty((MICS, freqs), dtype=np.float32)
    imag = np.empty((MICS, freqs), dtype=np.float32)
    np.dot(frame, front.analysis_re, real)
    np.dot(frame, front.analysis_im, imag)
    features = np.empty((freqs, 2 * MICS), dtype=np.float32)  # channels: re L, re R, im L, im R
    features[:, :MICS] = real.T
    features[:, MICS:] = imag.T
    _push_frame(state.input_hist, features)


@_jit
def _synthesise(front, state, out):
    """This frame's output spectrogram (state.spec) -> 128 final samples per output channel."""
    spec, tail = state.spec, state.tail
    outputs = tail.shape[0]
    freqs = spec.shape[0]
    frame = np.zeros(N_FFT, dtype=np.float32)
    for o in range(outputs):
        frame[:] = 0.0
        for k in range(freqs):
            re, im = spec[k, o], spec[k, outputs + o]
            for n in range(N_FFT):
                frame[n] += re * front.synthesis_re[k, n] + im * front.synthesis_im[k, n]
        for n in range(HOP):
            value = frame[n]
            if n < LOOKAHEAD:
                value += tail[o, n]
            out[o, n] = value / front.envelope[n]
        tail[o, :] = frame[HOP:]


@_jit
def _net_step(chunk, hint, net, merges, state, merge_state, out):
    """One chunk through a TF-GridNet (with merge modules after its first blocks when
    merges hold any: the boosted small model). Writes out [n_out, 128] and state.spec."""
    freqs = net.front.analysis_re.shape[1]
    dim = net.input_norm_w.shape[0]
    blocks = net.blocks
    hidden = blocks.inter_whh.shape[1]
    _analyse(chunk, net.front, state)
    x = np.empty((freqs, dim), dtype=np.float32)
    _conv(state.input_hist, net.input_conv, x)
    _layer_norm_rows(x, net.input_norm_w, net.input_norm_b, x)

    normed = np.empty((freqs, dim), dtype=np.float32)
    both = np.empty((freqs, 2 * hidden), dtype=np.float32)
    gates = np.empty((freqs, 4 * hidden), dtype=np.float32)
    recurrent = np.empty((freqs, 4 * hidden), dtype=np.float32)
    update = np.empty((freqs, dim), dtype=np.float32)
    merged = np.empty((freqs, dim), dtype=np.float32)
    shift = np.empty((freqs, dim), dtype=np.float32)
    for b in range(blocks.intra_wih.shape[0]):
        # Intra-frame BiLSTM across frequency.
        _layer_norm_rows(x, blocks.intra_norm_w[b], blocks.intra_norm_b[b], normed)
        _bilstm(normed, blocks.intra_wih[b], blocks.intra_whh[b], blocks.intra_bias[b], both)
        _linear_add(both, blocks.intra_proj_w[b], blocks.intra_proj_b[b], x)
        # Inter-frame LSTM: one step for every frequency at once, state carried across frames.
        _layer_norm_rows(x, blocks.inter_norm_w[b], blocks.inter_norm_b[b], normed)
        lstm_h, lstm_c = state.lstm_h[b], state.lstm_c[b]
        _linear(normed, blocks.inter_wih[b], blocks.inter_bias[b], gates)
        np.dot(lstm_h, blocks.inter_whh[b], recurrent)
        gates += recurrent
        for f in range(freqs):
            _lstm_cells(gates[f], lstm_h[f], lstm_c[f])
        _linear_add(lstm_h, blocks.inter_proj_w[b], blocks.inter_proj_b[b], x)
        if net.attention.query_w.shape[0]:
            _attention(b, x, x, net.attention, state.attention, update)
            x += update
        if b < net.condition_scale.shape[0]:  # TSE
            x *= net.condition_scale[b]
            x += net.condition_shift[b]
        if b < merges.scale_w.shape[0]:
            # Merge: FiLM of the features of frame t - delay by the hint that arrived now,
            # then cross-attention from the current features.
            delay = merge_state.past.shape[1]
            if delay:
                slot = merge_state.seen[0] % delay
                aligned = merge_state.past[b, slot].copy()
                merge_state.past[b, slot] = x
            else:
                aligned = x.copy()
            _linear(hint, merges.scale_w[b], merges.scale_b[b], merged)
            _linear(hint, merges.shift_w[b], merges.shift_b[b], shift)
            merged *= aligned
            merged += shift
            _attention(b, x, merged, merges.attention, merge_state.attention, update)
            x += update
    if merges.scale_w.shape[0]:
        merge_state.seen[0] += 1
    _push_frame(state.output_hist, x)
    _conv(state.output_hist, net.output_conv, state.spec)
    _synthesise(net.front, state, out)


# ------------------------------------------------------------------------------ export
def _array(tensor: torch.Tensor) -> np.ndarray:
    """A float32 C-contiguous copy (never a view of the tensor: the engine is a snapshot)."""
    return np.array(tensor.detach().cpu().float().numpy(), dtype=np.float32, order="C", copy=True)


def _front_end(frontend) -> FrontEnd:
    """DFT matrices with the model's own analysis window, and its overlap-add envelope."""
    window = frontend.window.double().numpy()
    angle = 2 * np.pi * np.outer(np.arange(N_FFT), np.arange(N_FREQS)) / N_FFT  # [192, F]
    weights = np.full(N_FREQS, 2.0)
    weights[0] = weights[-1] = 1.0  # irfft: DC and Nyquist once, the rest twice (conjugate half)
    synth_re = (weights[:, None] * np.cos(angle.T) / N_FFT) * window
    synth_im = (-weights[:, None] * np.sin(angle.T) / N_FFT) * window
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return FrontEnd(f32(window[:, None] * np.cos(angle)), f32(-window[:, None] * np.sin(angle)),
                    f32(synth_re), f32(synth_im), _array(frontend.envelope))


def _conv_weights(weight: torch.Tensor, bias: torch.Tensor) -> Conv:
    """Conv2d weight [C_out, C_in, 3, 3] -> [3, 3, C_in, C_out]."""
    return Conv(_array(weight.permute(2, 3, 1, 0)), _array(bias))


def _blocks(model: TFGridNet) -> Blocks:
    def stack(fn):
        return np.ascontiguousarray(np.stack([fn(block) for block in model.blocks]))

    def rnn(block, name, direction):
        suffix = "_reverse" if direction else ""
        return getattr(block.intra_rnn, f"{name}_l0{suffix}")

    return Blocks(
        stack(lambda b: _array(b.intra_norm.weight)), stack(lambda b: _array(b.intra_norm.bias)),
        stack(lambda b: np.stack([_array(rnn(b, "weight_ih", d).T) for d in range(2)])),
        stack(lambda b: np.stack([_array(rnn(b, "weight_hh", d).T) for d in range(2)])),
        stack(lambda b: np.stack([_array(rnn(b, "bias_ih", d) + rnn(b, "bias_hh", d)) for d in range(2)])),
        stack(lambda b: _array(b.intra_proj.weight.T)), stack(lambda b: _array(b.intra_proj.bias)),
        stack(lambda b: _array(b.inter_norm.weight)), stack(lambda b: _array(b.inter_norm.bias)),
        stack(lambda b: _array(b.inter_rnn.weight_ih_l0.T)), stack(lambda b: _array(b.inter_rnn.weight_hh_l0.T)),
        stack(lambda b: _array(b.inter_rnn.bias_ih_l0 + b.inter_rnn.bias_hh_l0)),
        stack(lambda b: _array(b.inter_proj.weight.T)), stack(lambda b: _array(b.inter_proj.bias)))


def _attention_weights(layers: list, dim: int, heads: int = 1, qk: int = 1) -> Attention:
    """Stack LocalAttention layers; shared (one-head) PReLU slopes and norms are repeated per head."""
    def per_head(values: torch.Tensor, count: int) -> np.ndarray:
        return np.broadcast_to(_array(values), (count,) + tuple(values.shape[1:])).copy()

    def norm(n, count):  # HeadNorm [1 or heads, F, e] -> [heads, F * e]
        return per_head(n.reshape(n.shape[0], -1), count)

    rows = []
    for layer in layers:
        h = layer.heads
        slopes = np.stack([per_head(act.weight.reshape(-1), h)
                           for act in (layer.query_act, layer.key_act, layer.value_act)])
        rows.append((_array(layer.query.weight.T), _array(layer.query.bias), _array(layer.key.weight.T),
                     _array(layer.key.bias), _array(layer.value.weight.T), _array(layer.value.bias), slopes,
                     norm(layer.query_norm.weight, h), norm(layer.query_norm.bias, h),
                     norm(layer.key_norm.weight, h), norm(layer.key_norm.bias, h),
                     norm(layer.value_norm.weight, h), norm(layer.value_norm.bias, h),
                     _array(layer.out.weight.T), _array(layer.out.bias),
                     np.float32(layer.out_act.weight.item()), _array(layer.out_norm.weight),
                     _array(layer.out_norm.bias)))
    if not rows:  # no attention: empty arrays of the right ranks
        f = N_FREQS
        shapes = [(dim, heads * qk), (heads * qk,), (dim, heads * qk), (heads * qk,), (dim, dim), (dim,),
                  (3, heads), (heads, f * qk), (heads, f * qk), (heads, f * qk), (heads, f * qk),
                  (heads, f * dim // heads), (heads, f * dim // heads), (dim, dim), (dim,), (), (f, dim), (f, dim)]
        return Attention(*(np.zeros((0,) + s, dtype=np.float32) for s in shapes))
    return Attention(*(np.ascontiguousarray(np.stack(column)) for column in zip(*rows)))


def _net(model: TFGridNet, embedding: torch.Tensor | None) -> Net:
    d = model.size.emb_dim
    layers = [block.attention for block in model.blocks if block.attention is not None]
    if model.conditioning is not None:
        with torch.no_grad():
            scale = np.stack([_array(m.scale(embedding).view(d, N_FREQS).T) for m in model.conditioning])
            shift = np.stack([_array(m.shift(embedding).view(d, N_FREQS).T) for m in model.conditioning])
    else:
        scale = shift = np.zeros((0, N_FREQS, d), dtype=np.float32)
    deconv = model.output_conv.deconv  # transposed conv = conv with the kernel flipped, in/out swapped
    return Net(_front_end(model.frontend), _conv_weights(model.input_conv.conv.weight, model.input_conv.conv.bias),
               _array(model.input_norm.weight), _array(model.input_norm.bias), _blocks(model),
               _attention_weights(layers, d), np.ascontiguousarray(scale), np.ascontiguousarray(shift),
               _conv_weights(deconv.weight.transpose(0, 1).flip(2, 3), deconv.bias))


def _no_merges(dim: int) -> Merges:
    empty = np.zeros((0, 1, dim), dtype=np.float32)
    return Merges(empty, np.zeros((0, dim), np.float32), empty, np.zeros((0, dim), np.float32),
                  _attention_weights([], dim))


def _attention_state(weights: Attention, window: int, start: str = "masked") -> AttentionState:
    """Ring buffers of ``window`` zero frames for every layer of ``weights``; with ``start``
    "zeros" every query also attends to those zero frames until real ones replace them."""
    layers, heads = weights.slopes.shape[0], weights.slopes.shape[2]
    seen = window - 1 if start == "zeros" else 0
    return AttentionState(np.zeros((layers, heads, window, weights.query_norm_w.shape[2]), np.float32),
                          np.zeros((layers, heads, window, weights.value_norm_w.shape[2]), np.float32),
                          np.full(layers, seen, np.int64))


# ------------------------------------------------------------------------------ engines
def _check_chunk(chunk) -> np.ndarray:
    chunk = np.asarray(chunk, dtype=np.float32)
    if chunk.shape != (MICS, HOP):
        raise ModelInputError(f"a streaming chunk is [{MICS}, {HOP}] samples (binaural, 8 ms at 16 kHz), "
                              f"got {chunk.shape}")
    return np.ascontiguousarray(chunk)


def _check_embedding(task: str, embedding) -> torch.Tensor | None:
    if not get_task(task).needs_embedding:
        return None
    if embedding is None:
        raise ModelInputError("target speech extraction needs the target speaker's 256-d embedding")
    embedding = torch.as_tensor(np.asarray(embedding, dtype=np.float32)).reshape(1, -1)
    if embedding.shape[1] != EMBEDDING_DIM:
        raise ModelInputError(f"speaker embedding must have {EMBEDDING_DIM} values, got {embedding.shape[1]}")
    return embedding


class CompiledGridNet:
    """A TF-GridNet's streaming step, compiled. ``embedding``: the TSE target speaker's d-vector."""

    def __init__(self, model: TFGridNet, embedding=None):
        self.task, self.size = model.task, model.size
        self.n_outputs = model.n_outputs
        self.net = _net(model, _check_embedding(model.task, embedding))
        self.window = model.size.window
        # A vanilla model runs the same compiled step with no merge modules (empty weights).
        no_merges = _no_merges(model.size.emb_dim)
        self._no_merges = (no_merges, MergeState(np.zeros((0, 0, N_FREQS, model.size.emb_dim), np.float32),
                                                 np.zeros(1, np.int64), _attention_state(no_merges.attention, 1)))

    def initial_state(self) -> NetState:
        d, h, blocks = self.size.emb_dim, self.size.hidden, self.size.blocks
        f = N_FREQS
        attention = _attention_state(self.net.attention, self.window)
        return NetState(np.zeros((MICS, LOOKAHEAD), np.float32), np.zeros((3, f, 2 * MICS), np.float32),
                        np.zeros((blocks, f, h), np.float32), np.zeros((blocks, f, h), np.float32), attention,
                        np.zeros((3, f, d), np.float32), np.zeros((self.n_outputs, LOOKAHEAD), np.float32),
                        np.zeros((f, 2 * self.n_outputs), np.float32))

    def run(self, chunk: np.ndarray, state: NetState, hint=None, merges=None, merge_state=None) -> np.ndarray:
        out = np.empty((self.n_outputs, HOP), np.float32)
        if merges is None:
            merges, merge_state = self._no_merges
        _net_step(chunk, hint if hint is not None else _NO_HINT, self.net, merges, state, merge_state, out)
        return out

    def step(self, chunk, state: NetState) -> np.ndarray:
        """One chunk [2, 128] -> [sources, 2, 128]; the output lags the input by 64 samples."""
        out = self.run(_check_chunk(chunk), state)
        return out.reshape(get_task(self.task).sources, MICS, HOP)


_NO_HINT = np.zeros((N_FREQS, 1), np.float32)


class BoostedState(NamedTuple):
    small: NetState
    merges: MergeState
    large: NetState
    spec_hist: np.ndarray  # [3, F, 2 n_out] the large model's output spectrograms for the compression
    fifo: list             # hints in flight (the network)


class CompiledBoostedPair(BoostedSides):
    """A boosted pair's streaming step, compiled: remote side (large + compression), the network
    (:class:`~kboost.streamer.HintLink`), device side (small + merge modules)."""

    def __init__(self, pair: BoostedPair, embedding=None):
        self.task, self.delay = pair.task, pair.delay
        self.link = HintLink(pair.delay)
        self.small = CompiledGridNet(pair.small, embedding)
        self.large = CompiledGridNet(pair.large, embedding)
        self.compression = _conv_weights(pair.compression.conv.conv.weight, pair.compression.conv.conv.bias)
        self.hint_channels = pair.compression.out_channels
        self.merges = Merges(
            np.stack([_array(m.scale.weight.T) for m in pair.merges]), np.stack([_array(m.scale.bias) for m in pair.merges]),
            np.stack([_array(m.shift.weight.T) for m in pair.merges]), np.stack([_array(m.shift.bias) for m in pair.merges]),
            _attention_weights([m.attention for m in pair.merges], pair.small.size.emb_dim))
        self.merge_window = pair.merges[0].attention.window
        self.merge_start = pair.merges[0].attention.start

    def initial_state(self) -> BoostedState:
        d, f = self.small.size.emb_dim, N_FREQS
        merges = MergeState(np.zeros((len(self.merges.scale_w), self.delay, f, d), np.float32),
                            np.zeros(1, np.int64),
                            _attention_state(self.merges.attention, self.merge_window, self.merge_start))
        return BoostedState(self.small.initial_state(), merges, self.large.initial_state(),
                            np.zeros((3, f, 2 * self.large.n_outputs), np.float32), [])

    def remote_step(self, chunk, state: BoostedState) -> np.ndarray:
        """The remote side: the compressed hint [F, C] of this chunk."""
        large = state.large
        self.large.run(_check_chunk(chunk), large)
        _push_frame(state.spec_hist, large.spec)
        hint = np.empty((N_FREQS, self.hint_channels), np.float32)
        _conv(state.spec_hist, self.compression, hint)
        return hint

    def in_flight(self, state: BoostedState) -> list:
        return state.fifo

    def device_step(self, chunk, hint: np.ndarray, state: BoostedState) -> np.ndarray:
        """The device side for one chunk, given the hint that arrived now -> [sources, 2, 128]."""
        out = self.small.run(_check_chunk(chunk), state.small, hint, self.merges, state.merges)
        return out.reshape(get_task(self.task).sources, MICS, HOP)


def compile_model(model, embedding=None):
    """The compiled streaming engine of a TFGridNet or BoostedPair (weights copied as they are
    now). One silent chunk runs through a scratch state, so numba compiles its kernels (or loads
    them from its cache) here rather than inside the caller's first, timed chunk."""
    if isinstance(model, BoostedPair):
        engine = CompiledBoostedPair(model, embedding)
    elif isinstance(model, TFGridNet):
        engine = CompiledGridNet(model, embedding)
    else:
        raise TypeError(f"cannot compile {type(model).__name__}: expected TFGridNet or BoostedPair")
    engine.step(np.zeros((MICS, HOP), np.float32), engine.initial_state())
    return engine
