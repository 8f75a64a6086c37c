"""Evaluation metrics on binaural signals: SI-SDR(i), PESQ wide-band and STOI, per ear.

Conventions (paper-spec.md): SI-SDR is zero-mean and computed in float64; every metric is
computed per ear and per source, then averaged; for speech separation the estimates are first
matched to the references by the permutation with the best mean SI-SDR over both ears (one
permutation per utterance: a listener hears both ears of one output).

PESQ raises on silent or too-short signals and pystoi returns 1e-5 (with only a warning) when
there is too little speech: both count as failures (NaN here), never as scores.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np

STOI_FAILURE = 1e-5  # pystoi's sentinel for "not enough speech"


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Zero-mean scale-invariant SDR (dB) of two 1-D signals, in float64."""
    estimate = np.asarray(estimate, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if estimate.shape != reference.shape or estimate.ndim != 1:
        raise ValueError(f"si_sdr needs two 1-D signals of equal length, got {estimate.shape} and {reference.shape}")
    estimate = estimate - estimate.mean()
    reference = reference - reference.mean()
    energy = np.dot(reference, reference)
    if energy == 0:
        return float("nan")
    target = np.dot(estimate, reference) / energy * reference
    noise = estimate - target
    signal = np.dot(target, target)
    # An exact estimate would give +inf; the floor caps it near 300 dB so means stay finite.
    return float(10 * np.log10(max(signal, np.finfo(float).tiny) / max(np.dot(noise, noise), 1e-30 * signal,
                                                                     np.finfo(float).tiny)))


def pesq_wb(reference: np.ndarray, estimate: np.ndarray, rate: int = 16000) -> float:
    """Wide-band PESQ (pesq package), NaN when PESQ cannot score the pair (silent, too short)."""
    from pesq import PesqError, pesq

    try:
        return float(pesq(rate, np.asarray(reference, np.float64), np.asarray(estimate, np.float64), "wb"))
    except PesqError:
        return float("nan")


def stoi(reference: np.ndarray, estimate: np.ndarray, rate: int = 16000) -> float:
    """STOI (pystoi), NaN when pystoi reports too little speech or the reference is silent
    (pystoi then returns 0.0, which is no score either)."""
    from pystoi import stoi as pystoi_stoi

    if not np.any(reference):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "not enough STFT frames" warning; detected below
        value = float(pystoi_stoi(np.asarray(reference, np.float64), np.asarray(estimate, np.float64), rate))
    return float("nan") if value == STOI_FAILURE else value


def match_permutation(estimates: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Reorder ``estimates`` [S, 2, N] to the permutation of sources with the best mean SI-SDR."""
    sources = estimates.shape[0]
    if sources == 1:
        return estimates
    scores = np.array([[np.mean([si_sdr(estimates[i, ear], references[j, ear]) for ear in range(2)])
                        for j in range(sources)] for i in range(sources)])
    best = max(itertools.permutations(range(sources)),
               key=lambda perm: sum(scores[perm[j], j] for j in range(sources)))
    return estimates[list(best)]


def score_pairs(estimates: np.ndarray, references: np.ndarray, rate: int = 16000,
                perceptual: bool = True) -> dict:
    """Mean SI-SDR, PESQ and STOI of estimates against references, both [S, 2, N], over sources and
    ears (already matched), and the number of PESQ / STOI failures left out of the means."""
    si, pq, st = [], [], []
    for source in range(references.shape[0]):
        for ear in range(references.shape[1]):
            ref, est = references[source, ear], estimates[source, ear]
            si.append(si_sdr(est, ref))
            if perceptual:
                pq.append(pesq_wb(ref, est, rate))
                st.append(stoi(ref, est, rate))
    row = {"si_sdr": _nanmean(si)}
    if perceptual:
        row.update(pesq=_nanmean(pq), stoi=_nanmean(st),
                   pesq_failures=int(np.isnan(pq).sum()), stoi_failures=int(np.isnan(st).sum()))
    return row


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def score_utterance(item: tuple, perceptual: bool = True) -> dict:
    """One test utterance: (id, estimates [S, 2, N] or None for the mixture itself, references
    [S, 2, N], mixture [2, N], rate) -> a row of metrics (``perceptual`` False: SI-SDR(i) only).
    Picklable for worker processes."""
    utterance, estimates, references, mixture, rate = item
    mixture_as_estimates = np.broadcast_to(mixture, references.shape)
    if estimates is None:  # the mixture's own scores
        row = score_pairs(mixture_as_estimates, references, rate, perceptual)
    else:
        estimates = match_permutation(estimates, references)
        row = score_pairs(estimates, references, rate, perceptual)
        row["si_sdr_mixture"] = score_pairs(mixture_as_estimates, references, rate, perceptual=False)["si_sdr"]
        row["si_sdri"] = row["si_sdr"] - row["si_sdr_mixture"]
    return {"mixture_id": utterance, **row}
