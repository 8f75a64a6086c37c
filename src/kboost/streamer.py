"""The streaming contract: one 8 ms chunk in, one chunk out, the state carried by the caller.

Two engines implement it: :class:`TorchStreamer` (the PyTorch modules' own streaming step,
clips batched) and the compiled engine of :mod:`kboost.streaming` (batch 1, device speed). A
streamer binds the TSE speaker embedding when it is built, so a step needs only the chunk and
the state (as ESPnet's ``forward_streaming(frame, states)``)::

    streamer = make_streamer(model, embedding, engine="compiled")
    state = streamer.initial_state()
    out = streamer.step(chunk, state)    # [.., 2, 128] -> [.., sources, 2, 128], state updated
    out = stream(streamer, audio)        # a whole clip [.., 2, N] -> [.., sources, 2, N], aligned

Chunks are the engine's own arrays: torch tensors [B, 2, 128] for :class:`TorchStreamer`,
numpy [2, 128] for the compiled engine. A boosted pair's streamer also has its two sides and
the network between them (:class:`HintLink`), so a device side can be run and timed alone.
"""
from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .hint_codec import CODECS, HintCodec
from .models import HOP, LOOKAHEAD, BoostedPair, TFGridNet
from .models.frontend import stream_length
from .models.gridnet import check_audio, check_embedding

ENGINES = ("compiled", "torch")


@runtime_checkable
class Streamer(Protocol):
    task: str

    def initial_state(self):
        """A fresh state: silence before the first chunk."""

    def step(self, chunk, state):
        """One chunk [.., 2, 128] -> [.., sources, 2, 128]; ``state`` is updated in place. The
        output lags the input by the 64-sample lookahead."""


class HintLink:
    """The network between the remote and the device side: every hint arrives ``delay`` chunks
    after it was sent, in order; until the first one arrives the device gets zeros. ``codec``
    (:mod:`kboost.hint_codec`, default float32: as trained) quantises each hint before sending."""

    def __init__(self, delay: int, codec: HintCodec | None = None):
        if delay < 0:
            raise ValueError(f"delay must be >= 0 chunks, got {delay}")
        self.delay = delay
        self.codec = codec or CODECS["float32"]

    def deliver(self, sent, in_flight: list):
        """Queue ``sent`` (as the codec lets it through) on ``in_flight`` (the state's list of
        hints on the way); return the hint that arrives now."""
        in_flight.append(self.codec(sent))
        if len(in_flight) > self.delay:
            return in_flight.pop(0)
        return torch.zeros_like(sent) if isinstance(sent, torch.Tensor) else np.zeros_like(sent)


class ScheduledLink:
    """A link with jitter and loss (:mod:`kboost.link`), for the PyTorch engine: ``schedule``
    [B, T] gives, per clip and chunk, the age of the hint the device uses (-1: none, zeros), as
    :meth:`kboost.link.LinkModel.schedule` decides from the hints' arrivals; the device keeps
    ``keep`` chunks of hints and features. ``deliver`` returns the hint and its age [B, 1]."""

    def __init__(self, schedule, keep: int, codec: HintCodec | None = None):
        self.schedule = torch.as_tensor(schedule, dtype=torch.long)
        self.keep = int(keep)
        self.codec = codec or CODECS["float32"]
        if self.schedule.dim() != 2 or int(self.schedule.max()) > self.keep:
            raise ValueError(f"schedule must be [batch, chunks] with ages <= keep ({self.keep})")

    def deliver(self, sent: torch.Tensor, held: list):
        """Hold ``sent`` (the hint of this chunk) on ``held``; return (the hint each clip uses
        now, its age [B, 1])."""
        held.append(self.codec(sent))
        now = len(held) - 1
        if now >= self.schedule.shape[1]:
            raise ValueError(f"the link's schedule covers {self.schedule.shape[1]} chunks; chunk {now} streamed")
        ages = self.schedule[:, now]
        hint = torch.zeros_like(sent)
        for clip, age in enumerate(ages.tolist()):
            if age >= 0:
                hint[clip] = held[now - age][clip]
        if len(held) > self.keep:
            held[len(held) - self.keep - 1] = None  # older than any hint the device keeps
        return hint, ages[:, None]


class BoostedSides:
    """A boosted pair's step from its two sides: the remote side (large model + compression)
    sends this chunk's hint, the link delivers the one of ``delay`` chunks ago, the device side
    (small model + merge modules) uses it. Subclasses define ``remote_step``, ``device_step``
    and ``in_flight(state)`` (the state's list of hints on the way); they set ``self.link``."""

    link: HintLink

    def deliver(self, sent, state):
        return self.link.deliver(sent, self.in_flight(state))

    def step(self, chunk, state, large_chunk=None):
        """``large_chunk`` (default: ``chunk``) is what the remote side hears; tests poison it."""
        sent = self.remote_step(chunk if large_chunk is None else large_chunk, state)
        return self.device_step(chunk, self.deliver(sent, state), state)


class TorchStreamer:
    """The streaming step of a :class:`TFGridNet` as the PyTorch modules run it, for ``batch``
    clips at once; ``embedding`` [batch, 256] for TSE."""

    def __init__(self, model: TFGridNet, embedding: torch.Tensor | None = None, batch: int = 1,
                 dtype=torch.float32, device=None):
        self.model, self.task, self.embedding = model, model.task, embedding
        self._shape = (batch, dtype, device)

    def initial_state(self) -> dict:
        return self.model.initial_state(*self._shape)

    def step(self, chunk: torch.Tensor, state: dict) -> torch.Tensor:
        out, _ = self.model.step(chunk, state, self.embedding)
        return out


class TorchBoostedStreamer(BoostedSides, TorchStreamer):
    """A :class:`BoostedPair` streamed by its PyTorch modules."""

    def __init__(self, pair: BoostedPair, embedding: torch.Tensor | None = None, batch: int = 1,
                 dtype=torch.float32, device=None):
        super().__init__(pair, embedding, batch, dtype, device)
        self.link = HintLink(pair.delay)

    def in_flight(self, state: dict) -> list:
        return state["fifo"]

    def remote_step(self, chunk: torch.Tensor, state: dict) -> torch.Tensor:
        check_audio(chunk, chunk=True)
        check_embedding(self.task, chunk, self.embedding)
        return self.model.remote_step(chunk, state, self.embedding)

    def device_step(self, chunk: torch.Tensor, hint: torch.Tensor, state: dict) -> torch.Tensor:
        check_audio(chunk, chunk=True)
        return self.model.device_step(chunk, hint, state, self.embedding)


class LinkedStreamer(TorchBoostedStreamer):
    """A :class:`BoostedPair` streamed by its PyTorch modules over a :class:`ScheduledLink`: the
    device aligns each hint with its own features of the frame the hint describes."""

    def __init__(self, pair: BoostedPair, link: ScheduledLink, embedding: torch.Tensor | None = None, batch: int = 1,
                 dtype=torch.float32, device=None):
        super().__init__(pair, embedding, batch, dtype, device)
        self.link = link

    def deliver(self, sent, state):
        hint, state["hint_ages"] = self.link.deliver(sent, self.in_flight(state))
        return hint

    def device_step(self, chunk: torch.Tensor, hint: torch.Tensor, state: dict) -> torch.Tensor:
        check_audio(chunk, chunk=True)
        return self.model.device_step(chunk, hint, state, self.embedding, state["hint_ages"], self.link.keep)


def make_streamer(model, embedding=None, engine: str = "compiled", batch: int = 1,
                  dtype=torch.float32, device=None, hint_codec: HintCodec | None = None):
    """The streamer of a TFGridNet or BoostedPair: ``engine`` "compiled" (kboost.streaming; its
    weights copied now, batch 1) or "torch" (the modules themselves, ``batch`` clips of
    ``dtype`` on ``device``); ``embedding``: the TSE target's d-vector(s), [batch, 256];
    ``hint_codec``: how a boosted pair's hints are quantised before sending (default: float32)."""
    if hint_codec is not None and not isinstance(model, BoostedPair):
        raise ValueError(f"a hint codec needs a boosted pair; {type(model).__name__} sends no hints")
    if engine == "compiled":
        from .streaming import compile_model  # numba: loaded only when used

        streamer = compile_model(model, embedding)
    elif engine != "torch":
        raise ValueError(f"unknown streaming engine {engine!r}; choose from {', '.join(ENGINES)}")
    else:
        if embedding is not None:
            embedding = torch.as_tensor(embedding, dtype=dtype, device=device).reshape(batch, -1)
        if isinstance(model, BoostedPair):
            streamer = TorchBoostedStreamer(model, embedding, batch, dtype, device)
        elif isinstance(model, TFGridNet):
            streamer = TorchStreamer(model, embedding, batch, dtype, device)
        else:
            raise TypeError(f"cannot stream {type(model).__name__}: expected TFGridNet or BoostedPair")
    if hint_codec is not None:
        streamer.link = HintLink(streamer.link.delay, hint_codec)
    return streamer


def stream(streamer: Streamer, audio, timing: dict | None = None):
    """``audio`` [.., 2, N] chunk by chunk through ``streamer``; returns [.., sources, 2, N]
    aligned with the input (the 64-sample lag removed).

    The input is padded with zeros to whole chunks plus one, so the clip's last 64 samples come
    out of the lookahead, as if the input went on silent. With ``timing`` (a dict), "total" gets
    the seconds spent in the chunk loop and, for a boosted pair, "device" the part of it spent
    in the device side alone."""
    length = audio.shape[-1]
    extra = stream_length(length) - length
    torch_input = isinstance(audio, torch.Tensor)
    if torch_input:
        padded = torch.nn.functional.pad(audio, (0, extra))
    else:
        padded = np.pad(np.asarray(audio, dtype=np.float32), [(0, 0)] * (audio.ndim - 1) + [(0, extra)])
    split = timing is not None and isinstance(streamer, BoostedSides)
    device_seconds = 0.0
    outputs = []
    with torch.inference_mode():
        state = streamer.initial_state()
        started = time.perf_counter()
        for start in range(0, padded.shape[-1], HOP):
            chunk = padded[..., start:start + HOP]
            if not torch_input:
                chunk = np.ascontiguousarray(chunk)
            if split:  # the two sides separately, to time the device side on its own
                hint = streamer.deliver(streamer.remote_step(chunk, state), state)
                device_started = time.perf_counter()
                outputs.append(streamer.device_step(chunk, hint, state))
                device_seconds += time.perf_counter() - device_started
            else:
                outputs.append(streamer.step(chunk, state))
        if timing is not None:
            timing["total"] = time.perf_counter() - started
            if split:
                timing["device"] = device_seconds
    out = torch.cat(outputs, dim=-1) if torch_input else np.concatenate(outputs, axis=-1)
    return out[..., LOOKAHEAD:LOOKAHEAD + length]
