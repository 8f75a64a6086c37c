"""The runs of a study, their DVC stages and where their files live (torch-free: the report and the
stage scripts read it too). One place for what dvc.yaml spells out per stage:

    kind       name                     trained by                 evaluated by
    mixture    mixture                  -                          score_mixtures@<task>
    vanilla    small | medium | large   train_vanilla@<task>-<m>   evaluate_vanilla@<task>-<m>
    boosted    boosted-d<C>             train_boosted@<task>-<C>   evaluate_boosted@<task>-<C>
    ablation   boosted-d<C>-p<P>        train_ablation@<P>-<C>     evaluate_ablation@<P>-<C>  (SS)
    hint_cost  boosted-d<C>-<codec>     (the boosted-d<C> pair)    evaluate_hint_cost@<task>-<codec>
    variable   boosted-var-d<C>         train_variable@<task>      evaluate_variable@<task>-<C>
    (link)     -                        (boosted-d<C>, boosted-var) evaluate_link@<task>: link.csv, link.json

(P = model.compression for the main boosted runs; an ablation run has another P. A hint_cost run
is the headline-delay pair evaluated with its hints quantised before sending, kboost.hint_codec. A
variable run is the one variable-delay pair of the task, boosted-var, evaluated at delay C.)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .params import HINT_CODECS

VANILLA = ("small", "medium", "large")
MODELS_DIR = Path("data/models")
MIXTURES_DIR = Path("data/mixtures")
EVAL_ROWS_DIR = Path("data/eval")
EVAL_METRICS_DIR = Path("metrics/eval")
TRAIN_METRICS_DIR = Path("metrics/train")
RESULTS_DIR = Path("metrics/results")     # the compact view `dvc metrics show` prints
ABLATION_TASK = "ss"
VARIABLE = "boosted-var"  # the variable-delay pair of a task (trained once, evaluated at every delay)
_BOOSTED_NAME = re.compile(r"boosted-d(\d+)(?:-p(\d+))?(?:-(" + "|".join(HINT_CODECS) + r"))?")
_VARIABLE_NAME = re.compile(VARIABLE + r"-d(\d+)")


def run_name(model: str, delay: int | None = None, compression: int = 1, main_compression: int = 1) -> str:
    """Name of a run: a vanilla size, or boosted-d<delay>[-p<P>] (the suffix only for P other
    than the main runs' compression)."""
    if model in VANILLA:
        return model
    if model == "variable":
        return VARIABLE
    if model != "boosted" or delay is None:
        raise ValueError(f"unknown model {model!r}: expected one of {VANILLA} or 'boosted' with a delay")
    return f"boosted-d{delay}" + ("" if compression == main_compression else f"-p{compression}")


@dataclass(frozen=True)
class Run:
    """One run of the study: what it is, which stages make it, which files it has."""

    task: str
    name: str
    kind: str                        # mixture, vanilla, boosted, ablation, hint_cost or variable
    delay: int | None = None
    compression: int | None = None
    codec: str | None = None         # hint_cost: how the hints were quantised

    @classmethod
    def parse(cls, task: str, name: str, main_compression: int = 1) -> "Run":
        """The run of ``task`` called ``name`` (mixture, a vanilla size, boosted-d<C>[-p<P>][-<codec>])."""
        if name == "mixture":
            return cls(task, name, "mixture")
        if name in VANILLA:
            return cls(task, name, "vanilla")
        variable = _VARIABLE_NAME.fullmatch(name)
        if variable is not None:
            return cls(task, name, "variable", int(variable[1]), main_compression)
        match = _BOOSTED_NAME.fullmatch(name)
        if match is None:
            raise ValueError(f"unknown run {name!r}: expected mixture, {', '.join(VANILLA)} or "
                             f"boosted-d<C>[-p<P>][-<codec: {'|'.join(HINT_CODECS)}>] or {VARIABLE}-d<C>")
        delay, compression, codec = int(match[1]), match[2], match[3]
        if codec is not None:
            if compression is not None:
                raise ValueError(f"unknown run {name!r}: the hint-cost study quantises the main pairs' hints only")
            return cls(task, name, "hint_cost", delay, main_compression, codec)
        if compression is None:
            return cls(task, name, "boosted", delay, main_compression)
        return cls(task, name, "ablation", delay, int(compression))

    @property
    def model(self) -> str | None:
        """The model trained (train.py --model): small, medium, large, boosted or variable (None
        for the mixtures)."""
        return {"mixture": None, "vanilla": self.name, "variable": "variable"}.get(self.kind, "boosted")

    @property
    def trained(self) -> str:
        """The name of the run whose model this run uses (a hint_cost run: its float32 pair; a
        variable run: the task's variable-delay pair)."""
        return {"hint_cost": f"boosted-d{self.delay}", "variable": VARIABLE}.get(self.kind, self.name)

    @property
    def train_stage(self) -> str | None:
        return {"mixture": None,
                "vanilla": f"train_vanilla@{self.task}-{self.name}",
                "boosted": f"train_boosted@{self.task}-{self.delay}",
                "hint_cost": f"train_boosted@{self.task}-{self.delay}",
                "variable": f"train_variable@{self.task}",
                "ablation": f"train_ablation@{self.compression}-{self.delay}"}[self.kind]

    @property
    def eval_stage(self) -> str:
        return {"mixture": f"score_mixtures@{self.task}",
                "vanilla": f"evaluate_vanilla@{self.task}-{self.name}",
                "boosted": f"evaluate_boosted@{self.task}-{self.delay}",
                "ablation": f"evaluate_ablation@{self.compression}-{self.delay}",
                "hint_cost": f"evaluate_hint_cost@{self.task}-{self.codec}",
                "variable": f"evaluate_variable@{self.task}-{self.delay}"}[self.kind]

    # Paths under a root (the default: where dvc.yaml puts them).
    def checkpoint_dir(self, root: Path = MODELS_DIR) -> Path:
        return Path(root) / self.task / self.trained

    def checkpoint(self, root: Path = MODELS_DIR) -> Path:
        """The weights evaluation uses (best validation epoch)."""
        return self.checkpoint_dir(root) / "best.pt"

    def live_dir(self, root: Path = TRAIN_METRICS_DIR) -> Path:
        """The DVCLive log of the run's training."""
        return Path(root) / self.task / self.trained

    def eval_rows(self, root: Path = EVAL_ROWS_DIR) -> Path:
        """Per-utterance scores (CSV, DVC-cached)."""
        return Path(root) / self.task / f"{self.name}.csv"

    def eval_summary(self, root: Path = EVAL_METRICS_DIR) -> Path:
        """Means, confidence half-widths, sizes of the evaluation (JSON, in git)."""
        return Path(root) / self.task / f"{self.name}.json"

    def result(self, root: Path = RESULTS_DIR) -> Path:
        """The run's few headline numbers, as `dvc metrics show` lists them."""
        return Path(root) / self.task / f"{self.name}.json"


def study_runs(params: dict) -> list[Run]:
    """Every run the active study makes, in pipeline order: per task the mixtures, the vanilla
    models and the boosted pairs per delay, then the SS compression ablation, then the studies
    beyond the paper: per task the hint-cost runs (the headline-delay pair with each of
    hint_cost.codecs) and the variable-delay pair at each delay."""
    compression = int(params["model"]["compression"])
    runs = []
    for task in params["tasks"]:
        runs.append(Run(task, "mixture", "mixture"))
        runs.extend(Run(task, size, "vanilla") for size in VANILLA)
        runs.extend(Run(task, run_name("boosted", int(d)), "boosted", int(d), compression)
                    for d in sorted(params["delays"]))
    if ABLATION_TASK in params["tasks"]:
        for p in params["ablation"]["compressions"]:
            for d in params["ablation"]["delays"]:
                runs.append(Run(ABLATION_TASK, run_name("boosted", int(d), int(p), compression), "ablation",
                                int(d), int(p)))
    delay = int(params["delay"])
    for task in params["tasks"]:
        runs.extend(Run(task, f"{run_name('boosted', delay)}-{codec}", "hint_cost", delay, compression, codec)
                    for codec in params["hint_cost"]["codecs"])
        runs.extend(Run(task, f"{VARIABLE}-d{int(d)}", "variable", int(d), compression)
                    for d in sorted(params["delays"]))
    return runs


def link_rows(task: str, root: Path = EVAL_ROWS_DIR) -> Path:
    """Per-utterance SI-SDRi of the link study (both pairs, every link condition)."""
    return Path(root) / task / "link.csv"


def link_summary(task: str, root: Path = EVAL_METRICS_DIR) -> Path:
    """Means of the link study per pair and condition, with the floor lines (JSON, in git)."""
    return Path(root) / task / "link.json"


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
    if model in ("boosted", "variable") and train["boosted_init"] == "small":
        return training_epochs(params, task, "small") * clips_per_epoch(params)
    return 0
