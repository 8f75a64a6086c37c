"""The runs of a study and where their files live (torch-free: the report reads these too).

    vanilla       <task>/<small|medium|large>
    boosted       <task>/boosted-d<delay>            (P = model.compression)
    ablation      <task>/boosted-d<delay>-p<P>        (compression ablation)
"""
from __future__ import annotations

from pathlib import Path

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


def checkpoint_path(task: str, name: str, which: str = "best.pt") -> Path:
    return MODELS_DIR / task / name / which


def eval_paths(task: str, name: str) -> tuple[Path, Path]:
    """(per-utterance CSV, summary JSON) of a run, or of the mixtures themselves (name "mixture")."""
    return EVAL_ROWS_DIR / task / f"{name}.csv", EVAL_METRICS_DIR / task / f"{name}.json"


def best_epoch(history: list[dict]) -> dict:
    """The history row of the best validation SI-SNRi (the first such epoch on ties): the
    epoch whose weights best.pt holds."""
    return max(history, key=lambda row: row["val_si_snri"])


def clips_per_epoch(params: dict) -> int:
    """Training clips one epoch draws (profile train.train_mixtures, or every training mixture)."""
    profile = params["profiles"][params["profile"]]
    per_epoch = profile["train"]["train_mixtures"]
    return int(per_epoch if per_epoch is not None else profile["data"]["mixtures"]["train"])


def training_epochs(params: dict, task: str, model: str) -> int:
    """Epochs of ``model`` (small, medium, large or boosted) on ``task``: the profile's
    train.epochs entry, one number for every task or a {task: epochs} mapping."""
    value = params["profiles"][params["profile"]]["train"]["epochs"][model]
    return int(value[task] if isinstance(value, dict) else value)


def clips_before(params: dict, task: str, model: str) -> int:
    """Clips a run's small model had seen before its own first epoch: a warm-started boosted
    pair continues from the vanilla small model (profile train.boosted_init: small)."""
    train = params["profiles"][params["profile"]]["train"]
    if model == "boosted" and train["boosted_init"] == "small":
        return training_epochs(params, task, "small") * clips_per_epoch(params)
    return 0
