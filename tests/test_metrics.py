"""Metric code against reference implementations and independent formulas, on real signals."""
import numpy as np
import pytest
import torch

from kboost import metrics, objectives


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Two different synthetic (espeak-ng) utterances at 16 kHz, 3 s each: real speech signals."""
    from kboost.sources.espeak import Speaker, synthesize

    out = []
    for voice, text in (("en-us", "The quick brown fox jumps over the lazy dog near the river bank."),
                        ("en-GB-x-rp", "Seven silver spoons were placed on the old wooden table today.")):
        audio = synthesize(Speaker(speaker_id=voice, voice=voice, variant="m1", pitch=50, rate=160), text, 16000)
        audio = np.pad(audio, (0, max(0, 48000 - len(audio))))[:48000]
        out.append(audio.astype(np.float64))
    return out


def _independent_si_sdr(estimate, reference):
    """SI-SDR written from its definition (Le Roux et al. 2019), independently of kboost."""
    estimate = estimate - estimate.mean()
    reference = reference - reference.mean()
    alpha = estimate @ reference / (reference @ reference)
    return 10 * np.log10(np.sum((alpha * reference) ** 2) / np.sum((alpha * reference - estimate) ** 2))


def test_si_sdr_matches_definition_and_torch_objective(speech):
    rng = np.random.default_rng(0)
    clean, other = speech
    for noisy in (clean + 0.3 * other, 0.5 * clean + 0.05 * rng.standard_normal(clean.size) + 0.2):
        expected = _independent_si_sdr(noisy, clean)
        assert metrics.si_sdr(noisy, clean) == pytest.approx(expected, abs=1e-9)
        torch_value = objectives.si_sdr(torch.from_numpy(noisy)[None], torch.from_numpy(clean)[None]).item()
        assert torch_value == pytest.approx(expected, abs=1e-4)
    assert metrics.si_sdr(3.0 * clean + 1.0, clean) > 100  # scale and offset invariant


def test_pesq_and_stoi_match_reference_packages(speech):
    from pesq import pesq
    from pystoi import stoi

    clean, other = speech
    noisy = clean + 0.5 * other
    assert metrics.pesq_wb(clean, noisy) == pytest.approx(pesq(16000, clean, noisy, "wb"), abs=1e-6)
    assert metrics.stoi(clean, noisy) == pytest.approx(stoi(clean, noisy, 16000), abs=1e-9)
    assert metrics.pesq_wb(clean, clean) > metrics.pesq_wb(clean, noisy)


def test_failures_are_nan_and_counted_not_averaged(speech):
    clean, _ = speech
    silent = np.zeros_like(clean)
    assert np.isnan(metrics.pesq_wb(silent, silent))
    short = clean[:2000]  # 0.125 s: too little speech for STOI
    assert np.isnan(metrics.stoi(short, short))
    refs = np.stack([np.stack([clean, silent])])  # one source, left ear speech, right ear silent
    row = metrics.score_pairs(refs.copy(), refs)
    assert row["pesq_failures"] == 1 and row["stoi_failures"] == 1
    assert row["pesq"] == pytest.approx(metrics.pesq_wb(clean, clean))


def test_permutation_matching_and_pit_loss(speech):
    clean, other = speech
    refs = np.stack([np.stack([clean, clean]), np.stack([other, other])])  # [S=2, 2 ears, N]
    swapped = refs[::-1] + 0.01
    matched = metrics.match_permutation(swapped, refs)
    assert np.allclose(matched, refs + 0.01)
    est = torch.from_numpy(swapped.copy())[None].float()
    ref = torch.from_numpy(refs.copy())[None].float()
    pit = objectives.negative_si_sdr(est, ref, permutation_invariant=True).item()
    plain = objectives.negative_si_sdr(est, ref, permutation_invariant=False).item()
    assert pit < -30 < plain  # the right permutation scores high; the wrong one does not


def test_score_utterance_reports_improvement_over_mixture(speech):
    clean, other = speech
    mixture = np.stack([clean + other, clean + 0.8 * other])
    refs = np.stack([np.stack([clean, clean])])
    better = refs + 0.05 * np.stack([np.stack([other, other])])
    row = metrics.score_utterance(("m1", better, refs, mixture, 16000))
    assert row["mixture_id"] == "m1"
    assert row["si_sdri"] == pytest.approx(row["si_sdr"] - row["si_sdr_mixture"])
    assert row["si_sdri"] > 20
    own = metrics.score_utterance(("m1", None, refs, mixture, 16000))
    assert own["si_sdr"] == pytest.approx(row["si_sdr_mixture"])
