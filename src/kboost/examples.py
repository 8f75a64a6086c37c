"""Audio examples for the results page: one test mixture per task through every trained model.

For each task: the mixture, the target(s), and the output of the vanilla small, medium and
large models and of the boosted small model at every delay (streamed chunk by chunk, as
evaluated). SS outputs are matched to the targets first. Files are 16-bit FLAC, each scaled
only if its peak would clip; ``manifest.json`` lists them for the page.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .audio import write_audio
from .dataset import MixtureDataset
from .evaluation import estimate
from .runs import MIXTURES_DIR, MODELS_DIR, Run, study_runs
from .fsutil import atomic_dir, write_json
from .metrics import match_permutation, score_pairs
from .models.checkpoint import load_checkpoint

PEAK = 0.99


def _write(path: Path, audio: np.ndarray, rate: int) -> None:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    scaled = audio * (PEAK / peak) if peak > PEAK else audio
    write_audio(path, scaled.astype(np.float32), rate, subtype="PCM_16")


def example_runs(params: dict, task: str) -> list[Run]:
    """The runs a task's example goes through: the vanilla models and the main boosted pairs."""
    return [run for run in study_runs(params) if run.task == task and run.kind in ("vanilla", "boosted")]


def render_examples(params: dict, out_dir: str | Path, index: int = 0, *, data_root: str | Path = MIXTURES_DIR,
                    models_root: str | Path = MODELS_DIR) -> dict:
    """Write the examples of test mixture ``index`` of every task (mixtures under ``data_root``,
    checkpoints under ``models_root``); return the manifest."""
    torch.manual_seed(0)
    manifest: dict = {"index": index, "tasks": {}}
    with atomic_dir(out_dir) as tmp:
        for task in params["tasks"]:
            data = MixtureDataset(Path(data_root) / task, "test")
            subset = torch.utils.data.Subset(data, [index])
            item = data[index]
            rate = data.sample_rate
            targets = item["targets"].numpy()
            entry = {"mixture_id": item["id"], "files": {}}
            _write(tmp / task / "mixture.flac", item["mixture"].numpy(), rate)
            entry["files"]["mixture"] = [f"{task}/mixture.flac"]
            entry["files"]["target"] = []
            for source in range(targets.shape[0]):
                name = f"{task}/target-s{source + 1}.flac"
                _write(tmp / name, targets[source], rate)
                entry["files"]["target"].append(name)
            entry["si_sdr"] = {}
            for example in example_runs(params, task):
                run = example.name
                model, _ = load_checkpoint(example.checkpoint(models_root))
                output = estimate(model, subset, batch_size=1, progress=False)[item["id"]]
                output = match_permutation(output, targets)
                entry["files"][run] = []
                for source in range(output.shape[0]):
                    name = f"{task}/{run}-s{source + 1}.flac"
                    _write(tmp / name, output[source], rate)
                    entry["files"][run].append(name)
                entry["si_sdr"][run] = round(score_pairs(output, targets, rate, perceptual=False)["si_sdr"], 2)
            manifest["tasks"][task] = entry
        write_json(tmp / "manifest.json", manifest)
    return manifest
