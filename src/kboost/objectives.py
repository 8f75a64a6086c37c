"""Training objectives: negative SI-SDR, permutation-invariant for speech separation.

All functions take batched binaural signals shaped ``[B, S, 2, N]`` (S sources, 2 ears). SI-SDR
is zero-mean (asteroid's convention, also used by kboost.metrics for evaluation) and computed
per (source, ear) pair; the loss averages over sources and ears, as the authors do.
"""
from __future__ import annotations

import itertools

import torch

EPS = 1e-8


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Zero-mean scale-invariant SDR in dB over the last axis (any leading shape)."""
    estimate = estimate - estimate.mean(dim=-1, keepdim=True)
    reference = reference - reference.mean(dim=-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + EPS)
    target = scale * reference
    noise = estimate - target
    return 10 * torch.log10((target.pow(2).sum(-1) + EPS) / (noise.pow(2).sum(-1) + EPS))


def pit_si_sdr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """SI-SDR [B, S, 2] of ``estimate`` [B, S, 2, N] under the best source permutation, chosen per
    utterance and ear (the authors' training criterion). With S = 1 this is plain SI-SDR."""
    sources = estimate.shape[1]
    if sources == 1:
        return si_sdr(estimate, reference)
    # scores[b, i, j, ear]: estimate i against reference j.
    scores = si_sdr(estimate.unsqueeze(2), reference.unsqueeze(1))
    perms = list(itertools.permutations(range(sources)))
    # per permutation: [B, S, 2] scores of (estimate i, reference perm[i])
    candidates = torch.stack([torch.stack([scores[:, i, p[i]] for i in range(sources)], dim=1) for p in perms])
    best = candidates.mean(dim=2).argmax(dim=0)  # [B, 2]: best permutation per utterance and ear
    index = best.unsqueeze(0).unsqueeze(2).expand(1, *candidates.shape[1:])
    return candidates.gather(0, index).squeeze(0)


def negative_si_sdr(estimate: torch.Tensor, reference: torch.Tensor, permutation_invariant: bool) -> torch.Tensor:
    """The training loss: mean negative SI-SDR over batch, sources and ears."""
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ in shape")
    scores = pit_si_sdr(estimate, reference) if permutation_invariant else si_sdr(estimate, reference)
    return -scores.mean()
