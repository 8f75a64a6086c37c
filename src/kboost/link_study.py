"""Study 2 beyond the paper: the trained pairs with their hints sent over a link with jitter and
loss (:mod:`kboost.link`), SI-SDRi against the loss rate and against the jitter.

Both the headline per-delay pair (boosted-d<C>) and the variable-delay pair (boosted-var) are
evaluated on the same link realisations (one random stream per condition and clip). The pairs
run whole clips with a per-frame schedule of hint ages, which equals streaming them chunk by
chunk through the same link (tests/test_link.py); the large model runs once per clip, since the
link changes only which hint the device uses. Floor lines: the vanilla small and medium models'
SI-SDRi on the same clips (their evaluation rows), and each pair with no hint at all ("none").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .dataset import MixtureDataset, collate
from .evaluation import EvaluationError, confidence_interval, pad_to_chunks, prepare, score, write_rows, _finite
from .fsutil import write_json
from .link import NO_HINT, LinkModel, clip_rng, sweep
from .models.checkpoint import load_checkpoint
from .models.frontend import pad_clip

PAIRS = ("fixed", "variable")  # boosted-d<C> and boosted-var


def schedules(model: LinkModel, ids: list[str], frames: int, seed: int, task: str) -> torch.Tensor:
    """Per clip, the age of the hint used at each frame [B, frames] (NO_HINT: none)."""
    rows = [model.schedule(frames, clip_rng(seed, task, model.label, mixture_id)) for mixture_id in ids]
    return torch.as_tensor(np.stack(rows), dtype=torch.long)


class _PairRunner:
    """One pair over the test clips: the remote side once, the device side per condition."""

    def __init__(self, checkpoint: str, batches: list[dict]):
        self.pair, self.info = load_checkpoint(checkpoint)
        if self.info.kind != "boosted":
            raise EvaluationError(f"{checkpoint}: the link study needs a boosted pair, found a {self.info.kind} model")
        self.batches = []
        with torch.inference_mode():
            for batch in batches:
                audio, embedding = pad_to_chunks(batch["mixture"]), batch.get("embedding")
                features = self.pair.small.frontend.analyse(pad_clip(audio))
                hints = self.pair.remote_forward(features, embedding)
                self.batches.append((batch["id"], batch["mixture"].shape[-1], audio, features, hints, embedding))

    def frames(self, batch_index: int) -> int:
        return self.batches[batch_index][4].shape[2]

    @torch.inference_mode()
    def outputs(self, ages: list[torch.Tensor]) -> dict:
        """``{mixture_id: estimate}`` with the hint ages ``ages[batch_index]`` [B, frames]."""
        out = {}
        for (ids, length, audio, features, hints, embedding), batch_ages in zip(self.batches, ages):
            estimate = self.pair.device_forward(audio, features, hints, embedding, batch_ages)[..., :length].numpy()
            out.update(zip(ids, estimate))
        return out


def evaluate_link_from_params(params_path: str, task: str, data_dir: str | Path, fixed_checkpoint: str,
                              variable_checkpoint: str, *, small_rows: str, medium_rows: str, fixed_rows: str,
                              rows_path: str | Path, summary_path: str | Path, progress: bool = True) -> dict:
    """Evaluate both pairs through every condition of params ``link`` on the first
    ``link.test_mixtures`` test clips; write the per-utterance rows and the summary."""
    params, prof = prepare(params_path, rows_path, summary_path)
    rows_path, summary_path = Path(rows_path), Path(summary_path)
    test_set = MixtureDataset(Path(data_dir), "test", limit=params["link"]["test_mixtures"])
    size = int(prof["batch_size"])
    clips = [test_set[i] for i in range(len(test_set))]  # read once: every condition scores the same clips
    batches = [collate(clips[start:start + size]) for start in range(0, len(clips), size)]
    ids = [mixture_id for batch in batches for mixture_id in batch["id"]]
    seed, delay = int(params["seed"]), int(params["delay"])
    runners = {"fixed": _PairRunner(fixed_checkpoint, batches), "variable": _PairRunner(variable_checkpoint, batches)}
    for name, runner in runners.items():
        if name == "fixed" and (runner.info.delay != delay or runner.info.delay_range is not None):
            raise EvaluationError(f"{fixed_checkpoint}: expected the pair trained for delay {delay} (params delay)")
        if name == "variable" and (runner.info.delay_range is None
                                   or not runner.info.delay_range[0] <= delay <= runner.info.delay_range[1]):
            raise EvaluationError(f"{variable_checkpoint}: expected a variable-delay pair whose range holds {delay}")

    # The sweeps, then "none": no hint ever arrives (each pair's own floor: what its hints add).
    conditions = sweep(params) + [("none", None)]
    all_rows, results = [], []
    bar = tqdm(total=len(conditions) * len(PAIRS), desc="link conditions", unit="run", disable=not progress,
               dynamic_ncols=True)
    for kind, link in conditions:
        # the same link realisation for both pairs (one random stream per condition and clip)
        if link is None:
            ages = [torch.full((len(batch["id"]), runners["fixed"].frames(k)), NO_HINT, dtype=torch.long)
                    for k, batch in enumerate(batches)]
        else:
            ages = [schedules(link, list(batch["id"]), runners["fixed"].frames(k), seed, task)
                    for k, batch in enumerate(batches)]
        hinted = float(np.mean([(a >= 0).float().mean().item() for a in ages]))
        loss, jitter = (None, None) if link is None else (link.loss, link.jitter)
        for name in PAIRS:
            frame = score(clips, runners[name].outputs(ages), workers=1, progress=False, perceptual=False,
                          rate=test_set.sample_rate)[["mixture_id", "si_sdr", "si_sdri"]]
            all_rows.append(frame.assign(pair=name, sweep=kind, loss_rate=loss, jitter=jitter))
            results.append({"pair": name, "sweep": kind, "loss_rate": loss, "jitter": jitter,
                            "si_sdri": {"mean": _finite(frame["si_sdri"].mean()),
                                        "ci95": _finite(confidence_interval(frame["si_sdri"]))},
                            "frames_with_hint": round(hinted, 4)})
            bar.update()
    bar.close()
    rows = pd.concat(all_rows, ignore_index=True)[["pair", "sweep", "loss_rate", "jitter", "mixture_id", "si_sdr",
                                                     "si_sdri"]]
    summary = {"task": task, "profile": params["profile"], "split": "test", "utterances": len(ids),
               "base_delay": delay, "link": {k: params["link"][k] for k in
                                             ("burst_chunks", "jitter", "policy", "max_age")},
               "results": results, "floors": _floors(ids, small=small_rows, medium=medium_rows),
               "check": _check_against(rows, fixed_rows)}
    write_rows(rows, rows_path)
    write_json(summary_path, summary)
    return summary


def _floors(ids: list[str], **paths) -> dict:
    """Mean SI-SDRi of the vanilla models on the same clips (their evaluation rows)."""
    out = {}
    for name, path in paths.items():
        rows = pd.read_csv(path).set_index("mixture_id")
        missing = sorted(set(ids) - set(rows.index))
        if missing:
            raise EvaluationError(f"{path}: no rows for {len(missing)} test mixtures of the link study "
                                  f"(e.g. {missing[0]}); evaluate it on the same test split")
        out[name] = _finite(rows.loc[ids, "si_sdri"].mean())
    return out


def _check_against(rows: pd.DataFrame, fixed_rows: str) -> dict:
    """The fixed pair over a perfect link (loss 0, jitter 0) here, whole clips, against its own
    evaluation (streamed chunk by chunk): the largest per-utterance SI-SDRi difference."""
    perfect = rows[(rows["pair"] == "fixed") & (rows["loss_rate"] == 0) & (rows["jitter"] == 0)]
    if perfect.empty:
        return {"against": Path(fixed_rows).stem, "max_abs_si_sdri_difference": None}
    streamed = pd.read_csv(fixed_rows).set_index("mixture_id")["si_sdri"]
    difference = (perfect.set_index("mixture_id")["si_sdri"] - streamed.reindex(perfect["mixture_id"]).values).abs()
    return {"against": Path(fixed_rows).stem, "max_abs_si_sdri_difference": _finite(difference.max())}
