"""Knowledge boosting: a large remote model sends compressed hints that reach the small
on-device model ``delay`` chunks late; merge modules fold them into the small model.

Whole-clip and streaming paths share the layers; in streaming the hint of chunk t enters a
FIFO and is consumed at chunk t + delay, exactly as a late network packet would be.

Beyond the paper, a hint may also come with its *age* (the device knows which frame a packet
describes): ``ages`` [B, T] gives, per clip and frame, how many chunks old the hint used at that
frame is (-1: no hint, zeros). The merge then aligns the hint with the device's own features of
that frame. A variable-delay pair (``delay_range``) is trained with a delay drawn per clip.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .frontend import N_FREQS, pad_clip
from .gridnet import TFGridNet, check_audio, check_embedding
from .layers import CausalConv2d, LocalAttention

MERGE_HEADS = 4
MERGE_QK = 256  # per-head query/key width E' = ceil(256 / F)
COMPRESSIONS = (1, 2, 4)


NO_HINT = -1  # an age meaning "no hint at this frame": the merge gets zeros


def delay_frames(x: torch.Tensor, delay: int, dim: int) -> torch.Tensor:
    """Shift ``x`` later in time by ``delay`` frames along ``dim`` (zeros first), same length."""
    if delay == 0:
        return x
    length = x.shape[dim]
    pad_shape = list(x.shape)
    pad_shape[dim] = min(delay, length)
    kept = x.narrow(dim, 0, max(length - delay, 0))
    return torch.cat([x.new_zeros(pad_shape), kept], dim=dim)


class Compression(nn.Module):
    """Remote side: causal 3x3 conv from the large model's output spectrogram (2 n_out channels)
    to 2 n_out / P channels before sending."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        if factor not in COMPRESSIONS or channels % factor:
            raise ValueError(f"compression factor must be one of {COMPRESSIONS} and divide {channels}, got {factor}")
        self.factor = factor
        self.out_channels = channels // factor
        self.conv = CausalConv2d(channels, self.out_channels)

    def forward(self, spec: torch.Tensor, buffer=None):
        return self.conv(spec, buffer)


class MergeModule(nn.Module):
    """FiLM with alignment, then cross-attention from the current features to the merged context.

    ``x``: small-model features [B, T, F, D] at frame t; ``hint``: [B, T, F, C] holding the
    hint of frame t - delay. The small features are delayed by the same amount so both describe
    the same audio: merged = x(t - delay) * scale(hint) + shift(hint). Queries come from x(t).
    """

    def __init__(self, dim: int, hint_channels: int, delay: int, window: int = 50, freqs: int = N_FREQS,
                 start: str = "zeros"):
        super().__init__()
        self.delay = delay
        self.scale = nn.Linear(hint_channels, dim)  # = Conv2d(C -> D, 1x1)
        self.shift = nn.Linear(hint_channels, dim)
        qk = math.ceil(MERGE_QK / freqs)
        self.attention = LocalAttention(dim, MERGE_HEADS, qk, freqs, window, per_head=False, start=start)

    def zero_residual(self) -> None:
        """Make the module add nothing (its cross-attention output norm's gain and bias zero): a
        pair whose small model is a trained vanilla one then starts at exactly its output, and
        training grows the hint's contribution from there."""
        with torch.no_grad():
            self.attention.out_norm.weight.zero_()
            self.attention.out_norm.bias.zero_()

    def forward(self, x: torch.Tensor, hint: torch.Tensor, state: dict | None = None,
                ages: torch.Tensor | None = None, keep: int | None = None):
        """``ages`` [B, T] (>= 0): the age of each frame's hint, instead of ``delay``; the state
        then keeps ``keep`` past frames (default, whole clips: the oldest age)."""
        state = state or {}
        if ages is not None:
            return self._forward_aged(x, hint, ages, state, keep)
        if state.get("past") is None:  # whole clip (or first chunk): zeros before the start
            past = x.new_zeros(x.shape[0], self.delay, x.shape[2], x.shape[3])
        else:
            past = state["past"]
        history = torch.cat([past, x], dim=1)
        aligned = history[:, : x.shape[1]]  # x(t - delay)
        merged = aligned * self.scale(hint) + self.shift(hint)
        out, cache = self.attention(x, merged, state.get("attention"))
        new_past = history[:, history.shape[1] - self.delay:] if self.delay else None
        return x + out, {"past": new_past, "attention": cache}

    def _forward_aged(self, x: torch.Tensor, hint: torch.Tensor, ages: torch.Tensor, state: dict, keep: int | None):
        keep = (int(ages.max()) if ages.numel() else 0) if keep is None else keep
        if ages.numel() and int(ages.max()) > keep:
            raise ValueError(f"a hint {int(ages.max())} chunks old is older than the {keep} frames the device keeps")
        past = state.get("aged_past")
        if past is None:
            past = x.new_zeros(x.shape[0], keep, x.shape[2], x.shape[3])
        history = torch.cat([past, x], dim=1)
        frames = torch.arange(x.shape[1], device=x.device)
        index = keep + frames - ages  # x(t - age); the zeros of ``past`` before the clip start
        aligned = history.gather(1, index[:, :, None, None].expand(-1, -1, *x.shape[2:]))
        merged = aligned * self.scale(hint) + self.shift(hint)
        out, cache = self.attention(x, merged, state.get("attention"))
        return x + out, {"aged_past": history[:, history.shape[1] - keep:], "attention": cache}


def hints_at_ages(hints: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
    """``hints`` [B, T, F, C] (the hint of each frame, as sent) -> the hint each frame uses,
    ``ages`` [B, T] chunks old (zeros for NO_HINT or before the clip start)."""
    frames = torch.arange(hints.shape[1], device=hints.device)
    source = frames - ages
    usable = (ages >= 0) & (source >= 0)
    picked = hints.gather(1, source.clamp(0, hints.shape[1] - 1)[:, :, None, None].expand(-1, -1, *hints.shape[2:]))
    return picked * usable[:, :, None, None].to(hints.dtype)


class BoostedPair(nn.Module):
    """Large (remote) model -> compression -> delay -> merge modules inside the small model."""

    def __init__(self, small: TFGridNet, large: TFGridNet, delay: int, compression: int = 1,
                 merge_start: str = "zeros", delay_range: tuple[int, int] | None = None):
        """``merge_start``: what the merge cross-attention sees before the clip start
        (:class:`LocalAttention`'s ``start``; the authors' code: "zeros"). ``delay_range``
        (low, high): a variable-delay pair, trained with a delay drawn per clip from it (``delay``
        is then its nominal delay, used where no age is given)."""
        super().__init__()
        if delay_range is not None:
            low, high = (int(d) for d in delay_range)
            if not 0 <= low <= delay <= high:
                raise ValueError(f"delay_range must be 0 <= low <= delay <= high, got {delay_range} with delay {delay}")
            delay_range = (low, high)
        self.delay_range = delay_range
        if small.task != large.task:
            raise ValueError(f"small ({small.task}) and large ({large.task}) models must share a task")
        if delay < 0:
            raise ValueError(f"delay must be >= 0 chunks, got {delay}")
        self.task, self.delay = small.task, delay
        self.small, self.large = small, large
        self.compression = Compression(2 * large.n_outputs, compression)
        self.merges = nn.ModuleList(
            MergeModule(small.size.emb_dim, self.compression.out_channels, delay, small.size.window,
                        start=merge_start)
            for _ in range(small.size.blocks - 1))
        self.merge_start = merge_start

    def at_delay(self, delay: int) -> "BoostedPair":
        """A variable-delay pair set to stream with hints ``delay`` chunks late (in place; both
        engines then treat it as a pair of that delay)."""
        if self.delay_range is None:
            raise ValueError(f"a pair trained for delay {self.delay} only cannot be run at another delay")
        low, high = self.delay_range
        if not low <= delay <= high:
            raise ValueError(f"delay {delay} is outside the range {low} to {high} this pair was trained on")
        self.delay = delay
        for merge in self.merges:
            merge.delay = delay
        return self

    def device_modules(self) -> list[nn.Module]:
        """What runs on the device: the small model and the merge modules."""
        return [self.small, self.merges]

    def remote_modules(self) -> list[nn.Module]:
        """What runs remotely: the large model and the compression."""
        return [self.large, self.compression]

    def _small(self, features, hint, state, embedding, ages=None, keep=None):
        small_state = state.setdefault("small", {})
        merge_states = state.setdefault("merges", [None] * len(self.merges))
        x = self.small.encode(features, small_state)
        for index in range(len(self.small.blocks)):
            x = self.small.run_block(index, x, small_state, embedding)
            if index < len(self.merges):
                x, merge_states[index] = self.merges[index](x, hint, merge_states[index], ages, keep)
        return self.small.decode(x, small_state)

    def forward(self, audio: torch.Tensor, embedding: torch.Tensor | None = None,
                large_audio: torch.Tensor | None = None, ages: torch.Tensor | None = None) -> torch.Tensor:
        """Whole clips -> the small model's output [B, sources, 2, N].

        ``large_audio`` (default: ``audio``) is what the remote model hears; tests poison it.
        ``ages``: [B] (one delay per clip) or [B, T] (per frame; NO_HINT for none), instead of
        ``delay``.
        """
        check_audio(audio, chunk=False)
        check_embedding(self.task, audio, embedding)
        features = self.small.frontend.analyse(pad_clip(audio))
        remote = features if large_audio is None else self.large.frontend.analyse(pad_clip(large_audio))
        return self.device_forward(audio, features, self.remote_forward(remote, embedding), embedding, ages)

    def remote_forward(self, features: torch.Tensor, embedding=None) -> torch.Tensor:
        """Whole clips, remote side: every frame's hint as sent, [B, C, T, F] (the conv's layout)."""
        hint, _ = self.compression(self.large.spectrogram(features, {}, embedding))
        return hint

    def device_forward(self, audio: torch.Tensor, features: torch.Tensor, hints: torch.Tensor, embedding=None,
                       ages: torch.Tensor | None = None) -> torch.Tensor:
        """Whole clips, device side, given the hints as sent [B, C, T, F] (of ``audio``, whose
        analysis is ``features``): each frame uses the one ``delay`` (or ``ages``) chunks old."""
        if ages is None:
            spec = self._small(features, delay_frames(hints, self.delay, dim=2).permute(0, 2, 3, 1), {}, embedding)
        else:
            hints = hints.permute(0, 2, 3, 1)  # [B, T, F, C]
            ages = torch.as_tensor(ages, device=hints.device).long()
            if ages.dim() == 1:
                ages = ages[:, None].expand(-1, hints.shape[1])
            if ages.shape != hints.shape[:2]:
                raise ValueError(f"ages must be [batch] or [batch, frames] = {list(hints.shape[:2])}, "
                                 f"got {list(ages.shape)}")
            spec = self._small(features, hints_at_ages(hints, ages), {}, embedding, self.merge_ages(ages))
        return self.small.to_sources(self.small.frontend.synthesise(spec)[..., : audio.shape[-1]])

    def initial_state(self, batch: int = 1, dtype=torch.float32, device=None) -> dict:
        return {"small_io": self.small.initial_state(batch, dtype, device),
                "large_io": self.large.initial_state(batch, dtype, device), "fifo": []}

    def remote_step(self, chunk: torch.Tensor, state: dict, embedding=None) -> torch.Tensor:
        """The remote side for one chunk: the compressed hint [B, 1, F, C] it sends."""
        io = state["large_io"]
        features, io["history"] = self.large.frontend.analyse_chunk(io["history"], chunk)
        large_state = state.setdefault("large", {})
        spec = self.large.spectrogram(features, large_state, embedding)
        hint, state["compression"] = self.compression(spec, state.get("compression"))
        return hint.permute(0, 2, 3, 1)

    def merge_ages(self, ages: torch.Tensor) -> torch.Tensor:
        """Ages the merges align with: a frame without a hint (zeros) at the nominal delay."""
        return torch.where(ages >= 0, ages, torch.full_like(ages, self.delay))

    def device_step(self, chunk: torch.Tensor, hint: torch.Tensor, state: dict, embedding=None,
                    ages: torch.Tensor | None = None, keep: int | None = None):
        """The device side for one chunk, given the hint that arrived now (of chunk t - delay;
        or, with ``ages`` [B, 1], of chunk t - age, the merges keeping ``keep`` past frames)."""
        io = state["small_io"]
        features, io["history"] = self.small.frontend.analyse_chunk(io["history"], chunk)
        spec = self._small(features, hint, state, embedding, None if ages is None else self.merge_ages(ages), keep)
        out, io["tail"] = self.small.frontend.synthesise_chunk(spec, io["tail"])
        return self.small.to_sources(out)

    def step(self, chunk: torch.Tensor, state: dict, embedding: torch.Tensor | None = None,
             large_chunk: torch.Tensor | None = None):
        """One chunk through both sides, the hint delayed by ``delay`` chunks (zeros before)."""
        check_audio(chunk, chunk=True)
        check_embedding(self.task, chunk, embedding)
        sent = self.remote_step(chunk if large_chunk is None else large_chunk, state, embedding)
        return self.device_step(chunk, self.deliver(sent, state), state, embedding), state

    def deliver(self, sent: torch.Tensor, state: dict) -> torch.Tensor:
        """The network: queue the hint just sent; return the one arriving now, ``delay`` chunks
        old (zeros until the first one arrives)."""
        state["fifo"].append(sent)
        if len(state["fifo"]) > self.delay:
            return state["fifo"].pop(0)
        return torch.zeros_like(sent)
