"""Evaluate a trained model on its task's test split: per-utterance rows and a summary.

Vanilla models run whole clips (the whole-clip and streaming paths agree to 1e-5, see
tests/test_models.py). Boosted pairs run the way they would be deployed: chunk by chunk
(8 ms), the large model's hint reaching the small model ``delay`` chunks late; all test clips
are streamed together as one batch, which changes nothing per clip.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .fsutil import atomic_file
from .metrics import score_utterance
from .models import HOP, LOOKAHEAD, BoostedPair
from .parallel import map_ordered
from .training import collate

SUMMARY_METRICS = ("si_sdr", "si_sdri", "pesq", "stoi")
MIXTURE_METRICS = ("si_sdr", "pesq", "stoi")


def stream_clips(pair: BoostedPair, mixture: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
    """Run ``pair`` chunk by chunk over clips [B, 2, N]; return the small model's output
    [B, S, 2, N] aligned with the input. The input is padded with zeros to whole chunks plus one,
    so the last 64 samples come out (the 4 ms lookahead), as if the input went on silent."""
    length = mixture.shape[-1]
    padded = torch.nn.functional.pad(mixture, (0, -length % HOP + HOP))
    state = pair.initial_state(mixture.shape[0], mixture.dtype, mixture.device)
    outputs = []
    for start in range(0, padded.shape[-1], HOP):
        out, state = pair.step(padded[..., start:start + HOP], state, embedding)
        outputs.append(out)
    streamed = torch.cat(outputs, dim=-1)
    return streamed[..., LOOKAHEAD:LOOKAHEAD + length]


@torch.inference_mode()
def estimate(model: torch.nn.Module, dataset, batch_size: int, progress: bool = True) -> dict:
    """Model outputs for every test clip: ``{mixture_id: [S, 2, N] float32 array}``."""
    model.eval()
    streaming = isinstance(model, BoostedPair)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    results = {}
    for batch in tqdm(loader, desc="streaming" if streaming else "inference", unit="batch",
                      disable=not progress, dynamic_ncols=True):
        mixture, embedding = batch["mixture"], batch.get("embedding")
        if streaming:
            output = stream_clips(model, mixture, embedding)
        else:  # whole clips: zero-pad to whole 8 ms chunks, cut back
            length = mixture.shape[-1]
            output = model(torch.nn.functional.pad(mixture, (0, -length % HOP)), embedding)[..., :length]
        for index, mixture_id in enumerate(batch["id"]):
            results[mixture_id] = output[index].numpy()
    return results


def score(dataset, estimates: dict | None, workers: int, progress: bool = True) -> pd.DataFrame:
    """Per-utterance metrics for ``estimates`` (None: the mixtures' own scores)."""
    items = []
    for index in range(len(dataset)):
        item = dataset[index]
        mixture_id = item["id"]
        items.append((mixture_id, None if estimates is None else estimates[mixture_id],
                      item["targets"].numpy(), item["mixture"].numpy(), dataset.sample_rate))
    rows = map_ordered(score_utterance, items, workers=workers, desc="scoring", unit="utt", progress=progress)
    return pd.DataFrame(rows)


def confidence_interval(values: pd.Series) -> float:
    """Half-width of the 95% confidence interval of the mean (Student's t)."""
    from scipy import stats

    values = values.dropna()
    if len(values) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


def summarise(rows: pd.DataFrame, metrics=SUMMARY_METRICS) -> dict:
    """Means, 95% confidence half-widths and failure counts of per-utterance rows."""
    summary = {"utterances": int(len(rows)),
               "mean": {m: _finite(rows[m].mean()) for m in metrics},
               "ci95": {m: _finite(confidence_interval(rows[m])) for m in metrics},
               "failures": {"pesq": int(rows["pesq_failures"].sum()), "stoi": int(rows["stoi_failures"].sum())},
               "scored_utterances": {m: int(rows[m].notna().sum()) for m in metrics}}
    return summary


def _finite(value: float):
    """JSON has no NaN: a metric nobody could compute is null."""
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def write_rows(rows: pd.DataFrame, path: Path) -> None:
    with atomic_file(path) as tmp:
        rows.to_csv(tmp, index=False, float_format="%.6f")
