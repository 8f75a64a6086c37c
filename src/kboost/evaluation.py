"""Evaluate a trained model on its task's test split: per-utterance rows and a summary.

Vanilla models run whole clips (the whole-clip and streaming paths agree to 1e-5, see
tests/test_models.py). Boosted pairs run the way they would be deployed: chunk by chunk
(8 ms), the large model's hint reaching the small model ``delay`` chunks late; all test clips
are streamed together as one batch, which changes nothing per clip.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .dataset import MixtureDataset, collate
from .errors import KboostError
from .complexity import CHUNKS_PER_SECOND
from .fsutil import atomic_file, remove_stale_temporaries, write_json
from .hint_codec import HintCodec, get_codec
from .metrics import score_utterance
from .models import HOP, BoostedPair, count_parameters
from .models.checkpoint import CheckpointError, load_checkpoint
from .models.fast_lstm import set_enabled as use_fast_lstm
from .models.frontend import N_FREQS
from .memory import retain_freed_memory
from .parallel import limit_threads, map_ordered
from .params import active_profile, load_params
from .runs import best_epoch
from .streamer import make_streamer, stream
from .tasks import get_task

SUMMARY_METRICS = ("si_sdr", "si_sdri", "pesq", "stoi")
SI_SDR_METRICS = ("si_sdr", "si_sdri")  # the studies beyond the paper: no PESQ / STOI
MIXTURE_METRICS = ("si_sdr", "pesq", "stoi")


class EvaluationError(KboostError, ValueError):
    """Evaluation inputs that do not fit together."""


def _estimate_compiled(pair: BoostedPair, dataset, threads: int, progress: bool, hint_codec=None) -> dict:
    """Boosted pairs streamed clip by clip through the compiled engine, ``threads`` clips at a
    time (its kernels release the GIL); TSE compiles the target's embedding into each engine."""
    shared = None if get_task(pair.task).needs_embedding else make_streamer(pair, hint_codec=hint_codec)

    def run(index: int):
        item = dataset[index]
        engine = shared if shared is not None else make_streamer(pair, item["embedding"].view(1, -1),
                                                                 hint_codec=hint_codec)
        return item["id"], stream(engine, item["mixture"].numpy())

    done = map_ordered(run, range(len(dataset)), workers=threads, desc="streaming", unit="clip",
                       threads=True, progress=progress)
    return dict(done)


def pad_to_chunks(mixture: torch.Tensor) -> torch.Tensor:
    """Zero-pad clips [..., N] to whole 8 ms chunks (whole-clip inference; cut back after)."""
    return torch.nn.functional.pad(mixture, (0, -mixture.shape[-1] % HOP))


def prepare(params_path: str, *outputs: str | Path) -> tuple[dict, dict]:
    """What every evaluation stage does first: load the params, choose the CPU LSTM and the
    inference threads, and remove what a killed write of ``outputs`` left behind. Returns
    (params, the active profile's ``eval`` section)."""
    params = load_params(params_path)
    use_fast_lstm(params["train"]["cpu_lstm"] == "fast")
    prof = active_profile(params)["eval"]
    torch.set_num_threads(int(prof["threads"]) or torch.get_num_threads())
    retain_freed_memory()
    for path in outputs:
        remove_stale_temporaries(Path(path))
    return params, prof


@torch.inference_mode()
def estimate(model: torch.nn.Module, dataset, batch_size: int, progress: bool = True,
             engine: str = "torch", threads: int = 1, hint_codec: HintCodec | None = None) -> dict:
    """Model outputs for every test clip: ``{mixture_id: [S, 2, N] float32 array}``.

    Boosted pairs are streamed chunk by chunk, with ``engine`` "torch" (the modules' step, clips
    batched) or "compiled" (kboost.streaming, equal to it to ~1e-6, ``threads`` clips at once),
    their hints sent through ``hint_codec`` (default: float32, as trained)."""
    model.eval()
    streaming = isinstance(model, BoostedPair)
    if streaming and engine == "compiled":
        return _estimate_compiled(model, dataset, threads, progress, hint_codec)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    results = {}
    for batch in tqdm(loader, desc="streaming" if streaming else "inference", unit="batch",
                      disable=not progress, dynamic_ncols=True):
        mixture, embedding = batch["mixture"], batch.get("embedding")
        if streaming:
            output = stream(make_streamer(model, embedding, "torch", len(mixture), mixture.dtype, mixture.device,
                                          hint_codec), mixture)
        else:  # whole clips
            output = model(pad_to_chunks(mixture), embedding)[..., : mixture.shape[-1]]
        for index, mixture_id in enumerate(batch["id"]):
            results[mixture_id] = output[index].numpy()
    return results


def score(dataset, estimates: dict | None, workers: int, progress: bool = True,
          perceptual: bool = True, rate: int | None = None) -> pd.DataFrame:
    """Per-utterance metrics for ``estimates`` (None: the mixtures' own scores); ``perceptual``
    False: SI-SDR(i) only, no PESQ / STOI. ``dataset``: a MixtureDataset, or its items already
    loaded (a list, with their ``rate``)."""
    rate = dataset.sample_rate if rate is None else rate
    items = []
    for index in range(len(dataset)):
        item = dataset[index]
        mixture_id = item["id"]
        items.append((mixture_id, None if estimates is None else estimates[mixture_id],
                      item["targets"].numpy(), item["mixture"].numpy(), rate))
    rows = map_ordered(functools.partial(score_utterance, perceptual=perceptual), items, workers=workers,
                       desc="scoring", unit="utt", progress=progress)
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
               "failures": {m: int(rows[f"{m}_failures"].sum()) for m in ("pesq", "stoi") if m in metrics},
               "scored_utterances": {m: int(rows[m].notna().sum()) for m in metrics}}
    return summary


def paired_difference(rows: pd.DataFrame, reference: pd.DataFrame, against: str, metrics=("si_sdri",)) -> dict:
    """Per-utterance differences ``rows - reference`` on the same test mixtures: their mean and
    95% confidence half-width (a paired comparison: far tighter than two separate intervals)."""
    joined = rows.set_index("mixture_id")[list(metrics)].join(
        reference.set_index("mixture_id")[list(metrics)], suffixes=("", "_reference"), how="inner")
    if len(joined) != len(rows):
        raise EvaluationError(f"paired comparison with {against}: {len(rows) - len(joined)} test mixtures have no "
                         f"{against} row; evaluate both on the same test split")
    out = {"against": against, "utterances": int(len(joined))}
    for m in metrics:
        diff = joined[m] - joined[f"{m}_reference"]
        out[m] = {"mean": _finite(diff.mean()), "ci95": _finite(confidence_interval(diff))}
    return out


def _finite(value: float):
    """JSON has no NaN: a metric nobody could compute is null."""
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def write_rows(rows: pd.DataFrame, path: Path) -> None:
    with atomic_file(path) as tmp:
        rows.to_csv(tmp, index=False, float_format="%.6f")


# ---------------------------------------------------------------------------- the stage
def evaluate_from_params(params_path: str, task: str, name: str, checkpoint: str | None, *,
                         data_dir: str | Path, rows_path: str | Path, summary_path: str | Path,
                         mixture_rows: str | Path | None = None, paired_rows: str | Path | None = None,
                         hint_codec: str = "float32", delay: int | None = None, perceptual: bool = True,
                         progress: bool = True) -> dict:
    """Evaluate one run (or, with ``checkpoint=None``, the mixtures themselves) on the test split of
    ``data_dir``; write its per-utterance CSV to ``rows_path`` and summary JSON to ``summary_path``;
    return the summary. ``mixture_rows``: the mixtures' scores (PESQ/STOI improvements);
    ``paired_rows``: the rows of a run of the same task (e.g. medium.csv) the summary is compared
    with utterance by utterance (named by the file's stem); ``hint_codec``: how a boosted pair's
    hints are quantised before sending (kboost.hint_codec; evaluation only); ``delay``: run a
    variable-delay pair with its hints that many chunks late; ``perceptual`` False: SI-SDR(i)
    only (a model; the studies beyond the paper compare SI-SDRi alone)."""
    params, prof = prepare(params_path, rows_path, summary_path)
    rows_path, summary_path = Path(rows_path), Path(summary_path)
    test_set = MixtureDataset(Path(data_dir), "test", limit=prof["test_mixtures"])
    summary = {"task": task, "run": name, "profile": params["profile"], "split": "test"}
    if checkpoint is None:
        rows = score(test_set, None, int(prof["workers"]), progress)
        summary.update(summarise(rows, MIXTURE_METRICS))
    else:
        model, info = load_checkpoint(checkpoint)
        if info.task != task:
            raise CheckpointError(f"{checkpoint}: a {info.task} model cannot be evaluated on the {task} test split")
        if delay is not None:
            if info.delay_range is None:
                raise EvaluationError(f"{checkpoint}: --delay needs a variable-delay pair; this {info.kind} model "
                                      f"was trained for delay {info.delay} only")
            try:
                model.at_delay(delay)
            except ValueError as exc:
                raise EvaluationError(f"{checkpoint}: {exc}") from exc
        codec = get_codec(hint_codec)
        if info.kind != "boosted" and codec.name != "float32":
            raise EvaluationError(f"{checkpoint}: a {info.kind} model sends no hints; --hint-codec needs a boosted pair")
        threads = int(prof["threads"]) or torch.get_num_threads()
        if info.kind == "boosted" and prof["engine"] == "compiled":
            limit_threads(1)  # one clip per thread: each thread's BLAS calls stay single-threaded
        estimates = estimate(model, test_set, int(prof["batch_size"]), progress, engine=prof["engine"], threads=threads,
                             hint_codec=codec if info.kind == "boosted" else None)
        rows = score(test_set, estimates, int(prof["workers"]), progress, perceptual)
        if mixture_rows is not None and perceptual:
            mixture = pd.read_csv(mixture_rows).set_index("mixture_id")[["pesq", "stoi"]]
            rows = rows.join(mixture.add_suffix("_mixture"), on="mixture_id")
        summary.update(summarise(rows, SUMMARY_METRICS if perceptual else SI_SDR_METRICS))
        if paired_rows is not None:
            reference = pd.read_csv(paired_rows)
            summary["paired"] = paired_difference(rows, reference, Path(paired_rows).stem)
        device = [model.small, model.merges] if info.kind == "boosted" else [model]
        history = info.meta.get("history")
        summary.update(kind=info.kind, delay=model.delay if info.kind == "boosted" else None,
                       delay_range=list(info.delay_range) if info.delay_range else None, compression=info.compression,
                       sizes={role: size.to_dict() for role, size in info.sizes.items()},
                       parameters_on_device=count_parameters(*device),
                       best_epoch=best_epoch(history)["epoch"] if history else None, streaming=info.kind == "boosted")
        if info.kind == "boosted":
            values = model.compression.out_channels * N_FREQS
            summary["hint"] = {"codec": codec.name, "bits_per_value": codec.bits, "values_per_hint": values,
                               "bits_per_hint": codec.bits_per_hint(values),
                               "kbit_per_second": codec.kbit_per_second(values, CHUNKS_PER_SECOND)}
    write_rows(rows, rows_path)
    write_json(summary_path, summary)
    return summary

