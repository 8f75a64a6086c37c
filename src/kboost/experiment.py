"""From params.yaml to the runs of the study: model names, sizes, settings and file locations.

The stage scripts in pipeline/ and the report share these names, so a model's checkpoint,
evaluation rows and metrics are found the same way everywhere:

    vanilla       <task>/<small|medium|large>
    boosted       <task>/boosted-d<delay>            (P = model.compression)
    ablation      <task>/boosted-d<delay>-p<P>        (compression ablation)
"""
from __future__ import annotations

from pathlib import Path

from .models import GridNetSize
from .training import TrainSettings

VANILLA = ("small", "medium", "large")
MODELS_DIR = Path("data/models")
MIXTURES_DIR = Path("data/mixtures")
EVAL_ROWS_DIR = Path("data/eval")
EVAL_METRICS_DIR = Path("metrics/eval")
TRAIN_METRICS_DIR = Path("metrics/train")


def run_name(model: str, delay: int | None = None, compression: int = 1, main_compression: int = 1) -> str:
    """Name of a run: a vanilla size, or boosted-d<delay>[-p<P>] (the suffix only for P other
    than the main runs' compression)."""
    if model in VANILLA:
        return model
    if model != "boosted" or delay is None:
        raise ValueError(f"unknown model {model!r}: expected one of {VANILLA} or 'boosted' with a delay")
    return f"boosted-d{delay}" + ("" if compression == main_compression else f"-p{compression}")


def model_sizes(params: dict) -> dict[str, GridNetSize]:
    """The active profile's small, medium and large sizes."""
    name = params["profile"]
    return {role: GridNetSize.from_dict(dict(cfg), f"profiles.{name}.models.{role}")
            for role, cfg in params["profiles"][name]["models"].items()}


def train_settings(params: dict, kind: str) -> TrainSettings:
    """Settings of a vanilla (``kind="vanilla"``) or boosted training run."""
    opt = params["train"]
    prof = params["profiles"][params["profile"]]["train"]
    return TrainSettings(
        epochs=int(prof["vanilla_epochs" if kind == "vanilla" else "boosted_epochs"]),
        batch_size=int(prof["batch_size"]), lr=float(opt["lr"]), lr_factor=float(opt["lr_factor"]),
        lr_patience=int(opt["lr_patience"]), min_lr=float(opt["min_lr"]), clip_norm=float(opt["clip_norm"]),
        crop_seconds=None if prof["crop_seconds"] is None else float(prof["crop_seconds"]),
        per_epoch=prof["train_mixtures"],
        seed=int(params["seed"]), threads=int(prof["threads"]), loader_workers=int(prof["loader_workers"]),
        mixed_precision=bool(opt["mixed_precision"]))


def checkpoint_path(task: str, name: str, which: str = "best.pt") -> Path:
    return MODELS_DIR / task / name / which


def eval_paths(task: str, name: str) -> tuple[Path, Path]:
    """(per-utterance CSV, summary JSON) of a run, or of the mixtures themselves (name "mixture")."""
    return EVAL_ROWS_DIR / task / f"{name}.csv", EVAL_METRICS_DIR / task / f"{name}.json"


# ------------------------------------------------------------------------------ training
def train_from_params(params_path: str, task: str, model: str, out_dir: str, live_dir: str | None, *,
                      delay: int | None = None, compression: int | None = None,
                      large_checkpoint: str | None = None, progress: bool = True) -> dict:
    """Train one run of the study as params.yaml describes it; returns the training summary."""
    import torch
    import yaml

    from .dataset import MixtureDataset
    from .download import file_digest
    from .fsutil import atomic_file, remove_stale_temporaries
    from .models.checkpoint import CheckpointError, build_boosted, build_vanilla, read_checkpoint
    from .params import ParamsError, active_profile, load_params
    from .training import BEST, LAST, Trainer

    params = load_params(params_path)
    profile = active_profile(params)
    sizes = model_sizes(params)
    main_compression = int(params["model"]["compression"])
    boosted = model == "boosted"
    if boosted:
        if delay is None or large_checkpoint is None:
            raise ParamsError("a boosted run needs --delay and --large (the trained vanilla large checkpoint)")
        compression = main_compression if compression is None else compression
    settings = train_settings(params, "boosted" if boosted else "vanilla")
    limits = profile["train"]

    torch.manual_seed(settings.seed)  # same initial small weights in vanilla and boosted runs
    if boosted:
        net = build_boosted(task, sizes["small"], sizes["large"], delay, compression, params["model"]["merge_start"])
        payload = read_checkpoint(large_checkpoint)
        stored = payload["sizes"].get("model")
        if payload["kind"] != "vanilla" or payload["task"] != task or stored != sizes["large"].to_dict():
            raise CheckpointError(f"{large_checkpoint}: expected the vanilla {task} large model of size "
                                  f"{sizes['large'].to_dict()}, found a {payload['kind']} {payload['task']} "
                                  f"model {payload['sizes']}; rerun its training stage")
        net.large.load_state_dict(payload["state_dict"])
    else:
        net = build_vanilla(task, sizes[model])

    data_dir = MIXTURES_DIR / task
    train_set = MixtureDataset(data_dir, "train")
    val_set = MixtureDataset(data_dir, "val", limit=limits["val_mixtures"])
    name = run_name(model, delay, compression or main_compression, main_compression)
    meta = {
        "task": task, "run": name, "profile": params["profile"],
        "sizes": {role: size.to_dict() for role, size in sizes.items()
                  if role == model or (boosted and role in ("small", "large"))},
        "delay": delay, "compression": compression,
        "data": {split: file_digest(data_dir / split / "manifest.csv") for split in ("train", "val")},
        "train_mixtures": len(train_set), "val_mixtures": len(val_set),
        "large_checkpoint": file_digest(large_checkpoint) if boosted else None,
    }
    out = Path(out_dir)
    for leftover in (BEST, LAST, "params.yaml"):
        remove_stale_temporaries(out / leftover)
    trainer = Trainer(net, task, train_set, val_set, settings, out, live_dir, meta, progress=progress)
    summary = trainer.fit()
    if trainer.rt.main:
        resolved = {"run": meta, "settings": settings.__dict__, "summary": summary, "seed": params["seed"]}
        with atomic_file(out / "params.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(resolved, sort_keys=True))
    return summary


# ---------------------------------------------------------------------------- evaluation
def evaluate_from_params(params_path: str, task: str, name: str, checkpoint: str | None,
                         mixture_rows: str | None, progress: bool = True) -> dict:
    """Evaluate one run (or, with ``checkpoint=None``, the mixtures themselves) on the test split;
    write its per-utterance CSV and summary JSON; return the summary."""
    import torch

    from .dataset import MixtureDataset
    from .evaluation import (MIXTURE_METRICS, SUMMARY_METRICS, estimate, score, summarise, write_rows)
    from .fsutil import write_json
    from .models import count_parameters
    from .models.checkpoint import load_checkpoint
    from .params import active_profile, load_params
    from .training import best_epoch

    params = load_params(params_path)
    prof = active_profile(params)["eval"]
    torch.set_num_threads(int(prof["threads"]) or torch.get_num_threads())
    test_set = MixtureDataset(MIXTURES_DIR / task, "test", limit=prof["test_mixtures"])
    rows_path, summary_path = eval_paths(task, name)
    summary = {"task": task, "run": name, "profile": params["profile"], "split": "test"}
    if checkpoint is None:
        rows = score(test_set, None, int(prof["workers"]), progress)
        summary.update(summarise(rows, MIXTURE_METRICS))
    else:
        model, info = load_checkpoint(checkpoint)
        if info.task != task:
            raise ValueError(f"{checkpoint}: a {info.task} model cannot be evaluated on the {task} test split")
        estimates = estimate(model, test_set, int(prof["batch_size"]), progress)
        rows = score(test_set, estimates, int(prof["workers"]), progress)
        if mixture_rows is not None:
            import pandas as pd

            mixture = pd.read_csv(mixture_rows).set_index("mixture_id")[["pesq", "stoi"]]
            rows = rows.join(mixture.add_suffix("_mixture"), on="mixture_id")
        summary.update(summarise(rows, SUMMARY_METRICS))
        device = [model.small, model.merges] if info.kind == "boosted" else [model]
        history = info.meta.get("history")
        summary.update(kind=info.kind, delay=info.delay, compression=info.compression,
                       sizes={role: size.to_dict() for role, size in info.sizes.items()},
                       parameters_on_device=count_parameters(*device),
                       best_epoch=best_epoch(history)["epoch"] if history else None, streaming=info.kind == "boosted")
    write_rows(rows, rows_path)
    write_json(summary_path, summary)
    return summary

