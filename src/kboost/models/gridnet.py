"""Causal TF-GridNet (the paper's streaming variant) for SE, SS and TSE.

One module serves both paths: ``forward(audio)`` runs whole clips (training), and
``step(chunk, state)`` runs one 8 ms chunk with explicit state (inference on a device).
Both call the same layers, with T frames or with one frame and carried state.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import KboostError
from ..tasks import get_task
from .frontend import HOP, LOOKAHEAD, N_FREQS, StftFrontEnd, pad_clip
from .fast_lstm import FastLSTM
from .layers import CausalConv2d, CausalConvTranspose2d, LocalAttention, StreamingLSTM

MICS = 2
EMBEDDING_DIM = 256


@dataclass(frozen=True)
class GridNetSize:
    """Width (D), LSTM hidden size (H), blocks (B), attention heads (0 = none) and window."""

    emb_dim: int
    hidden: int
    blocks: int
    heads: int = 0
    window: int = 50

    @classmethod
    def from_dict(cls, cfg: dict, name: str = "model") -> "GridNetSize":
        known = {"emb_dim", "hidden", "blocks", "heads", "window"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"{name}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        size = cls(**cfg)
        if min(size.emb_dim, size.hidden, size.blocks, size.window) < 1 or size.heads < 0:
            raise ValueError(f"{name}: sizes must be positive, got {cfg}")
        if size.heads and size.emb_dim % size.heads:
            raise ValueError(f"{name}: emb_dim {size.emb_dim} must be divisible by heads {size.heads}")
        return size

    def to_dict(self) -> dict:
        return asdict(self)


# The paper's sizes (paper-spec.md), identical for the three tasks.
PAPER_SIZES = {
    "small": GridNetSize(emb_dim=16, hidden=16, blocks=3),
    "medium": GridNetSize(emb_dim=26, hidden=18, blocks=3),
    "large": GridNetSize(emb_dim=64, hidden=64, blocks=3, heads=8, window=50),
}
ATTENTION_QK = 512  # TF-GridNet: per-head query/key width E = ceil(512 / F)


class GridNetBlock(nn.Module):
    """Intra-frame BiLSTM over frequency, inter-frame LSTM over time, optional local attention."""

    def __init__(self, size: GridNetSize, freqs: int = N_FREQS):
        super().__init__()
        d, h = size.emb_dim, size.hidden
        self.intra_norm = nn.LayerNorm(d)
        self.intra_rnn = FastLSTM(d, h, batch_first=True, bidirectional=True)  # = nn.LSTM, faster on CPUs
        self.intra_proj = nn.Linear(2 * h, d)  # = ConvTranspose1d(2H -> D, kernel 1)
        self.inter_norm = nn.LayerNorm(d)
        self.inter_rnn = StreamingLSTM(d, h)
        self.inter_proj = nn.Linear(h, d)
        self.attention = None
        if size.heads:
            qk = math.ceil(ATTENTION_QK / freqs)
            self.attention = LocalAttention(d, size.heads, qk, freqs, size.window, per_head=True)

    def forward(self, x: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        """``x``: [B, T, F, D]. ``state``: {"lstm": (h, c), "attention": (keys, values)}."""
        b, t, f, d = x.shape
        state = state or {}
        y, _ = self.intra_rnn(self.intra_norm(x).reshape(b * t, f, d))
        x = x + self.intra_proj(y).view(b, t, f, d)
        y = self.inter_norm(x).transpose(1, 2).reshape(b * f, t, d)
        y, lstm_state = self.inter_rnn(y, state.get("lstm"))
        x = x + self.inter_proj(y).view(b, f, t, d).transpose(1, 2)
        new_state = {"lstm": lstm_state}
        if self.attention is not None:
            y, new_state["attention"] = self.attention(x, x, state.get("attention"))
            x = x + y
        return x, new_state


class SpeakerConditioning(nn.Module):
    """TSE: per-(channel, frequency) scale and shift from the 256-d speaker embedding."""

    def __init__(self, dim: int, freqs: int = N_FREQS):
        super().__init__()
        self.dim, self.freqs = dim, freqs
        self.scale = nn.Linear(EMBEDDING_DIM, dim * freqs)  # = Conv1d(256 -> D*F, kernel 1)
        self.shift = nn.Linear(EMBEDDING_DIM, dim * freqs)
        # Assumption: the scale starts near 1 (bias 1), so at initialisation the conditioning
        # passes the features on instead of shrinking them ~30-fold (PyTorch's default init);
        # training starts far faster. Same parameters, same architecture.
        nn.init.ones_(self.scale.bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        b = embedding.shape[0]
        scale = self.scale(embedding).view(b, 1, self.dim, self.freqs).transpose(2, 3)
        shift = self.shift(embedding).view(b, 1, self.dim, self.freqs).transpose(2, 3)
        return x * scale + shift


class TFGridNet(nn.Module):
    """Causal TF-GridNet for one task: binaural audio in, the task's binaural output(s) out."""

    def __init__(self, task: str, size: GridNetSize):
        super().__init__()
        self.task, self.size = task, size
        self.facts = get_task(task)
        self.n_outputs = self.facts.output_channels
        self.frontend = StftFrontEnd()
        d = size.emb_dim
        self.input_conv = CausalConv2d(2 * MICS, d)
        self.input_norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(GridNetBlock(size) for _ in range(size.blocks))
        # Speaker conditioning after every block but the last (TSE only).
        self.conditioning = nn.ModuleList(
            SpeakerConditioning(d) for _ in range(size.blocks - 1)) if self.facts.needs_embedding else None
        self.output_conv = CausalConvTranspose2d(d, 2 * self.n_outputs)

    # ---------------------------------------------------------------- feature-level pieces
    def encode(self, features: torch.Tensor, state: dict) -> torch.Tensor:
        """[B, 4, T, F] STFT features -> [B, T, F, D]."""
        x, state["input"] = self.input_conv(features, state.get("input"))
        return self.input_norm(x.permute(0, 2, 3, 1))

    def run_block(self, index: int, x: torch.Tensor, state: dict, embedding: torch.Tensor | None) -> torch.Tensor:
        blocks = state.setdefault("blocks", [None] * len(self.blocks))
        x, blocks[index] = self.blocks[index](x, blocks[index])
        if self.conditioning is not None and index < len(self.conditioning):
            x = self.conditioning[index](x, embedding)
        return x

    def decode(self, x: torch.Tensor, state: dict) -> torch.Tensor:
        """[B, T, F, D] -> [B, 2 * n_outputs, T, F] output spectrogram (real, imag)."""
        out, state["output"] = self.output_conv(x.permute(0, 3, 1, 2), state.get("output"))
        return out

    def spectrogram(self, features: torch.Tensor, state: dict, embedding: torch.Tensor | None = None) -> torch.Tensor:
        x = self.encode(features, state)
        for index in range(len(self.blocks)):
            x = self.run_block(index, x, state, embedding)
        return self.decode(x, state)

    # --------------------------------------------------------------------- audio in / out
    def check_input(self, audio: torch.Tensor, embedding: torch.Tensor | None, chunk: bool) -> None:
        check_audio(audio, chunk)
        check_embedding(self.task, audio, embedding)

    def to_sources(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, n_outputs, N] -> [B, sources, 2 ears, N]."""
        return audio.view(audio.shape[0], self.facts.sources, MICS, audio.shape[-1])

    def forward(self, audio: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Whole clips: [B, 2, N] (N a multiple of 128) -> [B, sources, 2, N], aligned with the input."""
        self.check_input(audio, embedding, chunk=False)
        spec = self.spectrogram(self.frontend.analyse(pad_clip(audio)), {}, embedding)
        return self.to_sources(self.frontend.synthesise(spec)[..., : audio.shape[-1]])

    def initial_state(self, batch: int = 1, dtype=torch.float32, device=None) -> dict:
        return {"history": torch.zeros(batch, MICS, LOOKAHEAD, dtype=dtype, device=device),
                "tail": torch.zeros(batch, self.n_outputs, LOOKAHEAD, dtype=dtype, device=device)}

    def step(self, chunk: torch.Tensor, state: dict, embedding: torch.Tensor | None = None):
        """One chunk [B, 2, 128] -> ([B, sources, 2, 128], state). The output lags by 64 samples."""
        self.check_input(chunk, embedding, chunk=True)
        features, state["history"] = self.frontend.analyse_chunk(state["history"], chunk)
        spec = self.spectrogram(features, state, embedding)
        out, state["tail"] = self.frontend.synthesise_chunk(spec, state["tail"])
        return self.to_sources(out), state


class ModelInputError(KboostError, ValueError):
    """Audio or embedding of the wrong shape for a model."""


def check_audio(audio: torch.Tensor, chunk: bool) -> None:
    if audio.dim() != 3 or audio.shape[1] != MICS:
        raise ModelInputError(f"expected binaural audio shaped [batch, {MICS}, samples], got {tuple(audio.shape)}")
    if chunk and audio.shape[-1] != HOP:
        raise ModelInputError(f"a streaming chunk is {HOP} samples (8 ms at 16 kHz), got {audio.shape[-1]}")
    if not chunk and (audio.shape[-1] == 0 or audio.shape[-1] % HOP):
        raise ModelInputError(f"clip length must be a positive multiple of {HOP} samples, got {audio.shape[-1]}")


def check_embedding(task: str, audio: torch.Tensor, embedding: torch.Tensor | None) -> None:
    if not get_task(task).needs_embedding:
        return
    if embedding is None:
        raise ModelInputError(f"{get_task(task).title} needs the target speaker's 256-d embedding")
    if embedding.shape != (audio.shape[0], EMBEDDING_DIM):
        raise ModelInputError(f"speaker embedding must be [batch, {EMBEDDING_DIM}], got {tuple(embedding.shape)}")
