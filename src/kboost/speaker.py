"""Speaker embeddings (d-vectors) for target speech extraction.

The authors condition TSE on the 256-d d-vector of Resemblyzer's pretrained encoder, which
ships inside its PyPI wheel, so no download is needed.
"""
from __future__ import annotations

import warnings

import numpy as np

_encoder = None


def _load_encoder():
    global _encoder
    if _encoder is None:
        import torch

        # One thread: identical embeddings whatever the number of worker processes.
        torch.set_num_threads(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # webrtcvad imports the deprecated pkg_resources
            from resemblyzer import VoiceEncoder
        _encoder = VoiceEncoder("cpu", verbose=False)
    return _encoder


def embed_utterance(wav: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """The L2-normalised 256-d d-vector of a mono utterance (float32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer import preprocess_wav
    encoder = _load_encoder()
    prepared = preprocess_wav(np.asarray(wav, dtype=np.float32), source_sr=sample_rate)
    if prepared.size < sample_rate // 4:
        # Voice-activity trimming left almost nothing; embed the untrimmed signal instead.
        prepared = np.asarray(wav, dtype=np.float32)
    embedding = encoder.embed_utterance(prepared)
    return np.asarray(embedding, dtype=np.float32)
