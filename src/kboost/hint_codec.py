"""What a hint costs to send: codecs that quantise a hint before it leaves the remote side, and
the bits they put on the link.

A hint is the compressed large-model spectrogram of one frame (one 8 ms chunk): N_FREQS x C
values, C = 2 n_out / P channels. The trained pairs send float32; the other codecs are applied
at evaluation only (no retraining), to measure what a cheaper link costs in SI-SDRi:

    float32   the pairs' own hints, 32 bits a value
    float16   IEEE half precision, 16 bits a value
    int8      symmetric uniform quantisation, scaled per frame: scale = max|x| / (2^(b-1) - 1),
    int4      b bits a value plus the frame's float32 scale

Per-frame scaling looks at one frame only, so quantising keeps the link causal. Torch-free:
codecs take numpy arrays or torch tensors (hints [.., F, C], the frame's values in the last two
axes) and return the same type, shape and dtype.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

SCALE_BITS = 32  # a scaled codec sends the frame's scale as one float32


@dataclass(frozen=True)
class HintCodec:
    name: str
    bits: int            # per value
    scaled: bool         # integer levels times one scale per frame

    def bits_per_hint(self, values: int) -> int:
        """Bits on the link for one hint of ``values`` values."""
        return values * self.bits + (SCALE_BITS if self.scaled else 0)

    def kbit_per_second(self, values: int, hints_per_second: int) -> float:
        return self.bits_per_hint(values) * hints_per_second / 1000

    def __call__(self, hint):
        """``hint`` as the device receives it: quantised, then back to the sender's dtype."""
        if self.name == "float32":
            return hint
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(hint, torch.Tensor):
            if not self.scaled:
                return hint.to(torch.float16).to(hint.dtype)
            levels = 2 ** (self.bits - 1) - 1
            peak = hint.abs().amax(dim=(-2, -1), keepdim=True)
            scale = torch.where(peak > 0, peak / levels, torch.ones_like(peak))
            return torch.clamp(torch.round(hint / scale), -levels, levels) * scale
        hint = np.asarray(hint)
        if not self.scaled:
            return hint.astype(np.float16).astype(hint.dtype)
        levels = 2 ** (self.bits - 1) - 1
        peak = np.abs(hint).max(axis=(-2, -1), keepdims=True)
        scale = np.where(peak > 0, peak / levels, 1).astype(hint.dtype)
        return (np.clip(np.rint(hint / scale), -levels, levels) * scale).astype(hint.dtype)


CODECS: dict[str, HintCodec] = {codec.name: codec for codec in (
    HintCodec("float32", 32, scaled=False),
    HintCodec("float16", 16, scaled=False),
    HintCodec("int8", 8, scaled=True),
    HintCodec("int4", 4, scaled=True),
)}


def get_codec(name: str) -> HintCodec:
    """The codec called ``name``; a ValueError naming the allowed ones otherwise."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown hint codec {name!r}; allowed: {', '.join(CODECS)}") from None
