"""Causal STFT / iSTFT of the paper's front end, for whole clips and for 8 ms chunks.

A frame is 192 samples (Hamming, 97 bins) with a hop of 128: frame k covers input samples
[128 k - 64, 128 k + 128), i.e. chunk k plus the 64 samples before it. After frame k the
overlap-add output is final for samples [128 k - 64, 128 k + 64), so the streaming output lags
the input by 64 samples (the 4 ms lookahead); with the 8 ms spent collecting a chunk, the
algorithmic latency is 12 ms. The whole-clip path removes that lag, so its output is aligned with
its input, and equals the streaming output shifted by 64 samples. The last 64 samples of a clip
are final only after the frame of the next chunk: whole clips are run with one silent chunk
appended (``pad_clip``), as a stream that goes on with silence (the authors' convention), so no
sample is ever divided by the near-zero tail of the window.
"""
from __future__ import annotations

import torch
from torch import nn

SAMPLE_RATE = 16000
HOP = 128          # 8 ms chunk
LOOKAHEAD = 64     # 4 ms
N_FFT = HOP + LOOKAHEAD  # 192-sample window
N_FREQS = N_FFT // 2 + 1  # 97


def stream_length(samples: int) -> int:
    """Samples a stream of a clip of ``samples`` runs: whole chunks plus one (silent) chunk, so
    the clip's last 64 samples come out of the lookahead."""
    return (-(-samples // HOP) + 1) * HOP


def pad_clip(audio: torch.Tensor) -> torch.Tensor:
    """A whole clip [..., N] followed by one silent chunk: the frame that makes its last 64
    output samples final (the models are causal, so nothing before it changes)."""
    return torch.nn.functional.pad(audio, (0, HOP))


class StftFrontEnd(nn.Module):
    """Analysis (audio -> real/imag channels) and overlap-add synthesis."""

    def __init__(self):
        super().__init__()
        window = torch.hamming_window(N_FFT, periodic=True, dtype=torch.float64)
        self.register_buffer("window", window.float(), persistent=False)
        w2 = window**2
        # Overlap-add normalisation of one 128-sample output block: frame k's first 128 samples
        # plus, on the first 64, the previous frame's last 64.
        steady = w2[:HOP].clone()
        steady[:LOOKAHEAD] += w2[HOP:]
        self.register_buffer("envelope", steady.float(), persistent=False)

    # ----------------------------------------------------------------------------- analysis
    def analyse(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, M, N] audio (N a multiple of 128) -> [B, 2M, T, F], T = N / 128."""
        padded = torch.nn.functional.pad(audio, (LOOKAHEAD, 0))
        return self._spectrum(padded.unfold(-1, N_FFT, HOP))

    def analyse_chunk(self, history: torch.Tensor, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame [B, 2M, 1, F] from the previous 64 samples and a new chunk [B, M, 128].

        Returns the frame and the history for the next call.
        """
        frame = torch.cat([history, chunk], dim=-1)
        return self._spectrum(frame.unsqueeze(2)), frame[..., -LOOKAHEAD:]

    def _spectrum(self, frames: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(frames * self.window.to(frames.dtype), dim=-1)  # [B, M, T, F]
        return torch.cat([spec.real, spec.imag], dim=1)

    # ---------------------------------------------------------------------------- synthesis
    def _frames(self, features: torch.Tensor) -> torch.Tensor:
        """[B, 2S, T, F] real/imag -> [B, S, T, 192] windowed time frames."""
        if features.dtype in (torch.float16, torch.bfloat16):  # mixed precision: FFTs stay float32
            features = features.float()
        real, imag = features.chunk(2, dim=1)
        return torch.fft.irfft(torch.complex(real, imag), n=N_FFT, dim=-1) * self.window.to(real.dtype)

    def synthesise(self, features: torch.Tensor) -> torch.Tensor:
        """[B, 2S, T, F] -> [B, S, 128 T - 64] audio aligned with the analysed input: every sample
        that T frames make final (the last 64 need frame T + 1; see ``pad_clip``)."""
        frames = self._frames(features)
        batch, sources, count, _ = frames.shape
        blocks = frames[..., :HOP].clone()  # block j: samples [128 j - 64, 128 j + 64)
        blocks[:, :, 1:, :LOOKAHEAD] += frames[:, :, :-1, HOP:]
        blocks = blocks / self.envelope.to(blocks.dtype)
        return blocks.reshape(batch, sources, count * HOP)[..., LOOKAHEAD:]

    def synthesise_chunk(self, features: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame [B, 2S, 1, F] and the previous frame's tail [B, S, 64] -> 128 final samples
        (input samples [128 k - 64, 128 k + 64)) and the new tail."""
        frame = self._frames(features)[:, :, 0]  # [B, S, 192]
        block = frame[..., :HOP].clone()
        block[..., :LOOKAHEAD] += tail
        return block / self.envelope.to(block.dtype), frame[..., HOP:]
