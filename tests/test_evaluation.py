"""Evaluation: streamed boosted pairs equal their whole-clip output; rows and summaries."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from kboost.evaluation import SI_SDR_METRICS, confidence_interval, estimate, score, summarise
from kboost.models import BoostedPair, GridNetSize, TFGridNet
from kboost.streamer import make_streamer, stream

from test_training import TINY, TINY_LARGE, mixtures  # noqa: F401  (shared fixture)


@pytest.mark.parametrize("task,delay", [("ss", 0), ("tse", 3)])
def test_streamed_pair_equals_whole_clip_pair(task, delay):
    torch.manual_seed(0)
    pair = BoostedPair(TFGridNet(task, TINY), TFGridNet(task, TINY_LARGE), delay=delay).eval()
    audio = 0.1 * torch.randn(3, 2, 40 * 128)
    embedding = torch.randn(3, 256) if task == "tse" else None
    with torch.no_grad():
        whole = pair(audio, embedding)
        streamed = stream(make_streamer(pair, embedding, "torch", batch=3), audio)
    assert streamed.shape == whole.shape
    # All samples: the whole clip's last 4 ms, like the stream's, come from one more silent chunk.
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)


class _Clips(torch.utils.data.Dataset):
    """Three random test clips (of odd lengths) with what MixtureDataset items hold."""

    def __init__(self, task):
        generator = torch.Generator().manual_seed(1)
        self.items = [{"id": f"clip{k}", "mixture": 0.1 * torch.randn(2, 40 * 128 + 37 * k, generator=generator),
                       "targets": torch.zeros(2 if task == "ss" else 1, 2, 40 * 128 + 37 * k),
                       **({"embedding": torch.randn(256, generator=generator)} if task == "tse" else {})}
                      for k in range(3)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


@pytest.mark.parametrize("task", ["ss", "tse"])
def test_compiled_engine_estimates_equal_the_torch_stream(task):
    """eval.engine compiled (clip by clip, two threads) gives the torch step's outputs."""
    test_set = _Clips(task)
    torch.manual_seed(0)
    pair = BoostedPair(TFGridNet(task, TINY), TFGridNet(task, TINY_LARGE), delay=2).eval()
    reference = estimate(pair, test_set, batch_size=1, progress=False, engine="torch")
    compiled = estimate(pair, test_set, batch_size=2, progress=False, engine="compiled", threads=2)
    assert sorted(compiled) == sorted(reference)
    for key, value in reference.items():
        assert compiled[key].shape == value.shape
        assert np.abs(compiled[key] - value).max() <= 1e-5 * np.abs(value).max()


def test_estimate_and_score_rows_and_summary(mixtures):  # noqa: F811
    from kboost.dataset import MixtureDataset

    test_set = MixtureDataset(mixtures / "data" / "mixtures" / "ss", "test")
    torch.manual_seed(0)
    outputs = estimate(TFGridNet("ss", TINY), test_set, batch_size=2, progress=False)
    assert sorted(outputs) == sorted(test_set.manifest["mixture_id"])
    assert next(iter(outputs.values())).shape == (2, 2, 8000)
    rows = score(test_set, outputs, workers=1, progress=False)
    assert list(rows["mixture_id"]) == list(test_set.manifest["mixture_id"])
    assert np.allclose(rows["si_sdri"], rows["si_sdr"] - rows["si_sdr_mixture"])
    summary = summarise(rows)
    assert summary["utterances"] == 2
    assert set(summary["mean"]) == {"si_sdr", "si_sdri", "pesq", "stoi"}
    json.dumps(summary, allow_nan=False)  # JSON-safe: NaN becomes null
    own = score(test_set, None, workers=1, progress=False)
    assert np.allclose(own["si_sdr"], rows["si_sdr_mixture"])
    # --si-sdr-only (the studies beyond the paper): the same SI-SDR(i), no PESQ / STOI at all
    si_only = score(test_set, outputs, workers=1, progress=False, perceptual=False)
    assert list(si_only.columns) == ["mixture_id", "si_sdr", "si_sdr_mixture", "si_sdri"]
    pd.testing.assert_frame_equal(si_only, rows[list(si_only.columns)])
    short = summarise(si_only, SI_SDR_METRICS)
    assert set(short["mean"]) == {"si_sdr", "si_sdri"} and short["failures"] == {}
    assert short["mean"] == {m: summary["mean"][m] for m in SI_SDR_METRICS}


def test_confidence_interval_matches_student_t():
    from scipy import stats

    values = pd.Series([1.0, 2.0, 4.0, 7.0, np.nan])
    half = confidence_interval(values)
    low, high = stats.t.interval(0.95, 3, loc=3.5, scale=stats.sem([1, 2, 4, 7]))
    assert half == pytest.approx((high - low) / 2)


def test_paired_difference_is_per_utterance():
    from kboost.evaluation import EvaluationError, paired_difference

    boosted = pd.DataFrame({"mixture_id": ["a", "b", "c", "d"], "si_sdri": [3.0, 5.0, 4.0, 8.0]})
    medium = pd.DataFrame({"mixture_id": ["d", "c", "b", "a"], "si_sdri": [7.0, 3.5, 4.0, 2.0]})  # other order
    paired = paired_difference(boosted, medium, "medium")
    diffs = pd.Series([1.0, 1.0, 0.5, 1.0])
    assert paired["utterances"] == 4 and paired["si_sdri"]["mean"] == pytest.approx(diffs.mean())
    assert paired["si_sdri"]["ci95"] == pytest.approx(confidence_interval(diffs), abs=1e-4)
    with pytest.raises(EvaluationError, match="1 test mixtures have no medium row"):
        paired_difference(boosted, medium.iloc[:3], "medium")


def test_both_engines_send_the_hints_through_the_codec():
    from kboost.hint_codec import get_codec

    test_set = _Clips("se")
    torch.manual_seed(0)
    pair = BoostedPair(TFGridNet("se", TINY), TFGridNet("se", TINY_LARGE), delay=1).eval()
    with torch.no_grad():  # merge modules start as a zero residual: let the hints matter
        for p in pair.merges.parameters():
            p.add_(0.1 * torch.randn_like(p))
    for engine in ("torch", "compiled"):
        exact = estimate(pair, test_set, batch_size=1, progress=False, engine=engine)
        coarse = estimate(pair, test_set, batch_size=1, progress=False, engine=engine, hint_codec=get_codec("int4"))
        for key, value in exact.items():
            assert coarse[key].shape == value.shape
            assert np.abs(coarse[key] - value).max() > 1e-4 * np.abs(value).max()
