"""Building blocks shared by TF-GridNet and the knowledge-boosting modules.

Internal layout is channels-last, ``[batch, time, freq, channels]``: the LSTMs and all 1x1
projections then work on the last axis without permutes. Every stateful layer takes an optional
state and returns its new state, so the same code runs a whole clip (state None: zeros / empty
history) or one 8 ms frame at a time (T = 1, state carried), and both give the same numbers.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from .fast_lstm import FastLSTM

CAUSAL_FRAMES = 2  # the 3x3 convolutions see the current frame and two past ones


def with_history(x: torch.Tensor, buffer: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [B, C, T, F] preceded by the two buffered past frames (zeros at the start), and the
    buffer for the next call (its last two frames)."""
    if buffer is None:
        buffer = x.new_zeros(x.shape[0], x.shape[1], CAUSAL_FRAMES, x.shape[3])
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            # x is a [B, T, F, C] tensor seen as [B, C, T, F]: keep that layout through the cat,
            # so that the convolution runs channels-last (half the time of NCHW on the CPU)
            buffer = buffer.contiguous(memory_format=torch.channels_last)
    padded = torch.cat([buffer, x], dim=2)
    return padded, padded[:, :, -CAUSAL_FRAMES:]


class CausalConv2d(nn.Module):
    """Conv2d with a 3 (time) x 3 (freq) kernel, frequency padding 1 and a 2-frame causal buffer.

    Input and output are ``[B, C, T, F]``; the buffer holds the last two input frames.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, (CAUSAL_FRAMES + 1, 3), padding=(0, 1))

    def forward(self, x: torch.Tensor, buffer: torch.Tensor | None = None):
        padded, buffer = with_history(x, buffer)
        return self.conv(padded), buffer


class CausalConvTranspose2d(nn.Module):
    """ConvTranspose2d (3x3, frequency padding 1) made causal: output frame t uses input frames
    t, t-1, t-2 (the two past ones from a buffer), as in the paper's output layer."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, out_channels, (CAUSAL_FRAMES + 1, 3), padding=(0, 1))

    def forward(self, x: torch.Tensor, buffer: torch.Tensor | None = None):
        padded, buffer = with_history(x, buffer)
        # A stride-1 transposed convolution is a convolution with the kernel flipped and its
        # in/out channels swapped; over [2 past frames, x] without time padding it yields exactly
        # the causal outputs (frame t from inputs t, t-1, t-2), and runs much faster on CPU.
        weight = self.deconv.weight.transpose(0, 1).flip(2, 3)
        return F.conv2d(padded, weight, self.deconv.bias, padding=(0, 1)), buffer


class StreamingLSTM(FastLSTM):
    """One-layer, unidirectional, batch-first LSTM whose single-frame calls with a carried state
    run one fused ``torch.lstm_cell`` (much cheaper per 8 ms chunk than nn.LSTM's setup); whole
    sequences take FastLSTM's CPU kernels (an nn.LSTM: same parameters and state_dict)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, batch_first=True)

    def forward(self, x: torch.Tensor, hx=None):
        if x.shape[1] != 1 or hx is None:
            return super().forward(x, hx)
        h, c = torch.lstm_cell(x[:, 0], (hx[0][0], hx[1][0]), self.weight_ih_l0, self.weight_hh_l0,
                               self.bias_ih_l0, self.bias_hh_l0)
        return h.unsqueeze(1), (h.unsqueeze(0), c.unsqueeze(0))


class HeadPReLU(nn.Module):
    """PReLU on ``[..., heads * dim]`` (each head's channels side by side in the last dim, as a
    projection writes them) with one slope per head (``heads=1``: one shared slope)."""

    def __init__(self, heads: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.full((heads, 1, 1), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.weight.shape[0]
        slope = self.weight.view(heads, 1).expand(heads, x.shape[-1] // heads).reshape(-1)
        # x where x > 0, else slope * x, as relu(x) + slope * (x - relu(x)): plain elementwise
        # ops along the last dim, 2x (one slope) to 6x (per head) faster forward and backward on
        # the CPU than F.prelu, whose kernel took a fifth of a large model's training step
        positive = F.relu(x)
        return positive + slope * (x - positive)


class HeadNorm(nn.Module):
    """LayerNorm over (freq, dim) of ``[B, T, heads, F, dim]``.

    ``per_head``: separate gains and biases per head (TF-GridNet's per-head attention layers);
    otherwise one set shared by all heads.
    """

    def __init__(self, heads: int, freqs: int, dim: int, per_head: bool, eps: float = 1e-5):
        super().__init__()
        shape = (heads if per_head else 1, freqs, dim)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.weight.shape[-2:]
        if self.weight.shape[0] == 1:  # shared parameters: one fused layer_norm call
            return F.layer_norm(x, shape, self.weight[0], self.bias[0], self.eps)
        return F.layer_norm(x, shape, eps=self.eps) * self.weight + self.bias


RECOMPUTE_ABOVE = 2**22  # input elements (16 MB of float32) from which CPU training recomputes attention projections


class LocalAttention(nn.Module):
    """Multi-head attention across time over a causal window, with TF-GridNet's projections.

    Queries come from ``x``, keys and values from ``context`` (the same tensor for
    self-attention). Q/K: Linear(D -> heads * qk_dim), PReLU, LayerNorm over (F, qk_dim);
    V: Linear(D -> D), PReLU, LayerNorm over (F, D / heads); output: Linear(D -> D), PReLU,
    LayerNorm over (F, D). A query at frame t sees context frames t - window + 1 .. t.

    ``start`` says what a query near the clip start sees where that window reaches before it:
    ``"masked"``: nothing (only the frames that exist); ``"zeros"``: ``window - 1`` zero key/value
    frames (score 0, value 0), which still take a share of the softmax, as the authors'
    merge cross-attention does (its buffers start as zeros). Both run the same whole and streamed.
    """

    STARTS = ("masked", "zeros")

    def __init__(self, dim: int, heads: int, qk_dim: int, freqs: int, window: int, per_head: bool,
                 start: str = "masked"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention: {dim} channels do not split into {heads} heads")
        if start not in self.STARTS:
            raise ValueError(f"attention start must be one of {self.STARTS}, got {start!r}")
        self.start = start
        self.heads, self.qk_dim, self.v_dim, self.window = heads, qk_dim, dim // heads, window
        prelu_heads = heads if per_head else 1
        self.query = nn.Linear(dim, heads * qk_dim)
        self.key = nn.Linear(dim, heads * qk_dim)
        self.value = nn.Linear(dim, dim)
        self.query_act, self.key_act, self.value_act = (HeadPReLU(prelu_heads) for _ in range(3))
        self.query_norm = HeadNorm(heads, freqs, qk_dim, per_head)
        self.key_norm = HeadNorm(heads, freqs, qk_dim, per_head)
        self.value_norm = HeadNorm(heads, freqs, self.v_dim, per_head)
        self.out = nn.Linear(dim, dim)
        self.out_act = HeadPReLU(1)
        self.out_norm = nn.LayerNorm([freqs, dim])
        self.checkpoint_projections = True  # training, where memory matters; see forward

    def _heads(self, x, linear, act, norm, dim):
        b, t, f, _ = x.shape
        y = act(linear(x)).view(b, t, f, self.heads, dim).transpose(2, 3)  # [B, T, H, F, d]
        y = norm(y)
        return y.transpose(1, 2).reshape(b, self.heads, t, f * dim)  # [B, H, T, F*d]

    def forward(self, x: torch.Tensor, context: torch.Tensor, cache=None):
        """``x``, ``context``: [B, T, F, D]. T > 1: a whole clip (masked). T == 1: one streaming
        frame; ``cache`` is a ring buffer (keys, values, frames seen) of the last ``window``
        context frames, updated in place (attention is order-free, so slots may wrap)."""
        b, t, f, d = x.shape
        # Training: recompute the cheap per-frequency projections (linear, PReLU, norm) in the
        # backward pass instead of storing their intermediates, where memory matters (GPUs, and
        # paper-size inputs anywhere: the large model then needs ~10 GiB); small CPU batches
        # skip it, as it costs ~20% of a demo-size large model's step there.
        recompute = (self.checkpoint_projections and torch.is_grad_enabled() and t > 1
                     and (x.is_cuda or x.numel() > RECOMPUTE_ABOVE))

        def run(fn, *args):
            return checkpoint(fn, *args, use_reentrant=False) if recompute else fn(*args)

        q = run(self._heads, x, self.query, self.query_act, self.query_norm, self.qk_dim)
        k = run(self._heads, context, self.key, self.key_act, self.key_norm, self.qk_dim)
        v = run(self._heads, context, self.value, self.value_act, self.value_norm, self.v_dim)
        if t == 1:
            if cache is None:
                keys = k.new_zeros(b, self.heads, self.window, k.shape[-1])
                values = v.new_zeros(b, self.heads, self.window, v.shape[-1])
                # Zero start: the window begins full of zero frames, as if window - 1 were seen.
                seen = self.window - 1 if self.start == "zeros" else 0
            else:
                keys, values, seen = cache
            keys[:, :, seen % self.window] = k[:, :, 0]
            values[:, :, seen % self.window] = v[:, :, 0]
            valid = min(seen + 1, self.window)
            scores = torch.matmul(q, keys[:, :, :valid].transpose(-2, -1)) * q.shape[-1] ** -0.5
            out = torch.matmul(torch.softmax(scores, dim=-1), values[:, :, :valid])
            new_cache = (keys, values, seen + 1)
        else:
            # Query t sees context frames (t - window, t].
            before = self.window - 1 if self.start == "zeros" else 0  # zero frames before the start
            if before:
                k = F.pad(k, (0, 0, before, 0))
                v = F.pad(v, (0, 0, before, 0))
            query_at = torch.arange(t, device=x.device) + before
            offset = query_at.unsqueeze(1) - torch.arange(t + before, device=x.device).unsqueeze(0)
            mask = (offset >= 0) & (offset < self.window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, F*dv]
            new_cache = None
        out = out.view(b, self.heads, t, f, self.v_dim).permute(0, 2, 3, 1, 4).reshape(b, t, f, d)
        return run(self._output, out), new_cache

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        return self.out_norm(self.out_act(self.out(out)))
