"""From params.yaml to a training run of the study: model sizes, settings, and the run itself
(names and paths of runs: :mod:`kboost.runs`)."""
from __future__ import annotations

from pathlib import Path

from .models import GridNetSize
from .runs import run_name, training_epochs
from .training import TrainSettings


def model_sizes(params: dict) -> dict[str, GridNetSize]:
    """The active profile's small, medium and large sizes."""
    name = params["profile"]
    return {role: GridNetSize.from_dict(dict(cfg), f"profiles.{name}.models.{role}")
            for role, cfg in params["profiles"][name]["models"].items()}


def train_settings(params: dict, task: str, model: str) -> TrainSettings:
    """Settings of the training run of ``model`` (small, medium, large, boosted or variable: a
    variable-delay pair has one per-delay pair's budget) on ``task``."""
    model = "boosted" if model == "variable" else model
    opt = params["train"]
    prof = params["profiles"][params["profile"]]["train"]
    return TrainSettings(
        epochs=training_epochs(params, task, model),
        batch_size=int(prof["batch_size"]), lr=float(prof["lr"]), lr_factor=float(opt["lr_factor"]),
        lr_patience=int(opt["lr_patience"]), min_lr=float(opt["min_lr"]), clip_norm=float(opt["clip_norm"]),
        crop_seconds=None if prof["crop_seconds"] is None else float(prof["crop_seconds"]),
        per_epoch=prof["train_mixtures"],
        seed=int(params["seed"]), threads=int(prof["threads"]), loader_workers=int(prof["loader_workers"]),
        mixed_precision=bool(opt["mixed_precision"]))


# ------------------------------------------------------------------------------ training
def train_from_params(params_path: str, task: str, model: str, data_dir: str, out_dir: str,
                      live_dir: str | None, *, delay: int | None = None, compression: int | None = None,
                      large_checkpoint: str | None = None, small_checkpoint: str | None = None,
                      progress: bool = True) -> dict:
    """Train one run of the study as params.yaml describes it, on the mixtures in ``data_dir``,
    writing checkpoints to ``out_dir`` and the DVCLive log to ``live_dir``; returns the training summary.

    A boosted run starts its large model from ``large_checkpoint`` and, with the profile's
    ``boosted_init: small``, its small model from ``small_checkpoint`` (merge modules adding
    nothing at first, so the pair starts exactly at the vanilla small model's output)."""
    import torch

    from .dataset import MixtureDataset
    from .fsutil import file_digest, remove_temporaries_in
    from .models.checkpoint import build_boosted, build_vanilla
    from .models.fast_lstm import set_enabled as use_fast_lstm
    from .params import ParamsError, active_profile, load_params
    from .training import Trainer

    params = load_params(params_path)
    use_fast_lstm(params["train"]["cpu_lstm"] == "fast")
    profile = active_profile(params)
    sizes = model_sizes(params)
    main_compression = int(params["model"]["compression"])
    boosted = model in ("boosted", "variable")
    delay_range = None
    if model == "variable":  # one pair for every delay: nominal delay the range's high end
        delay_range = tuple(int(d) for d in params["variable_delay"]["range"])
        delay = delay_range[1]
    warm_start = boosted and profile["train"]["boosted_init"] == "small"  # small model from its vanilla run
    if boosted:
        if delay is None or large_checkpoint is None:
            raise ParamsError("a boosted run needs --delay and --large (the trained vanilla large checkpoint)")
        if warm_start and small_checkpoint is None:
            raise ParamsError(f"profiles.{params['profile']}.train.boosted_init is small: a boosted run needs "
                              f"--small (the trained vanilla small checkpoint)")
        compression = main_compression if compression is None else compression
    settings = train_settings(params, task, model)
    limits = profile["train"]

    torch.manual_seed(settings.seed)  # same initial small weights in vanilla and boosted runs
    if boosted:
        net = build_boosted(task, sizes["small"], sizes["large"], delay, compression, params["model"]["merge_start"],
                            delay_range)
        net.large.load_state_dict(_vanilla_weights(large_checkpoint, task, "large", sizes["large"]))
        if warm_start:
            net.small.load_state_dict(_vanilla_weights(small_checkpoint, task, "small", sizes["small"]))
            for merge in net.merges:
                merge.zero_residual()
    else:
        net = build_vanilla(task, sizes[model])

    data_dir = Path(data_dir)
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
        "small_checkpoint": file_digest(small_checkpoint) if warm_start else None,
        "init": limits["boosted_init"] if boosted else "scratch",
        **({"delay_range": list(delay_range)} if delay_range else {}),
    }
    out = Path(out_dir)
    for folder in (out, live_dir):  # what a killed write (checkpoint, metrics) left behind
        if folder is not None:
            remove_temporaries_in(folder)
    trainer = Trainer(net, task, train_set, val_set, settings, out, live_dir, meta, progress=progress)
    summary = trainer.fit()
    if trainer.rt.main:
        trainer.store.write_resolved_params(
            {"run": meta, "settings": settings.__dict__, "summary": summary, "seed": params["seed"]})
    return summary


def _vanilla_weights(path: str, task: str, role: str, size) -> dict:
    """The state dict of the trained vanilla ``role`` model of ``task`` at ``path``, checked."""
    from .models.checkpoint import CheckpointError, read_checkpoint

    payload = read_checkpoint(path)
    if payload["kind"] != "vanilla" or payload["task"] != task or payload["sizes"].get("model") != size.to_dict():
        raise CheckpointError(f"{path}: expected the vanilla {task} {role} model of size {size.to_dict()}, found a "
                              f"{payload['kind']} {payload['task']} model {payload['sizes']}; rerun its training stage")
    return payload["state_dict"]
