"""kboost.runs is the one description of a study's runs: dvc.yaml's stages must be exactly its runs,
reading and writing exactly its paths."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kboost.runs import VARIABLE, Run, link_rows, link_summary, study_runs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stages() -> dict[str, str]:
    """Every stage of the repository's dvc.yaml (foreach/matrix resolved) -> its command."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {stage.addressing: stage.cmd for stage in repo.index.stages}


@pytest.fixture(scope="module")
def runs() -> list[Run]:
    return study_runs(yaml.safe_load((REPO / "params.yaml").read_text()))


def test_the_training_and_evaluation_stages_are_exactly_the_runs(stages, runs):
    declared = {name for name in stages if name.split("@")[0] in
                ("train_vanilla", "train_boosted", "train_ablation", "score_mixtures", "evaluate_vanilla",
                 "evaluate_boosted", "evaluate_ablation", "evaluate_hint_cost", "train_variable",
                 "evaluate_variable")}
    expected = {run.eval_stage for run in runs} | {run.train_stage for run in runs if run.train_stage}
    assert declared == expected


def test_stage_commands_pass_the_paths_of_their_run(stages, runs):
    for run in runs:
        evaluate = stages[run.eval_stage].split()
        assert evaluate[evaluate.index("--rows") + 1] == run.eval_rows().as_posix()
        assert evaluate[evaluate.index("--summary") + 1] == run.eval_summary().as_posix()
        assert evaluate[evaluate.index("--data") + 1] == f"data/mixtures/{run.task}"
        if run.kind == "mixture":
            continue
        assert evaluate[evaluate.index("--checkpoint") + 1] == run.checkpoint().as_posix()
        assert evaluate[evaluate.index("--mixture-rows") + 1] == Run.parse(run.task, "mixture").eval_rows().as_posix()
        if run.kind == "hint_cost":  # compared with its own pair's float32 hints, same checkpoint
            float32 = Run.parse(run.task, run.trained)
            assert evaluate[evaluate.index("--paired-with") + 1] == float32.eval_rows().as_posix()
            assert evaluate[evaluate.index("--hint-codec") + 1] == run.codec
            assert evaluate[evaluate.index("--run") + 1] == run.name
            assert run.checkpoint() == float32.checkpoint() and run.train_stage == float32.train_stage
        elif run.kind == "variable":  # the one variable-delay pair at this delay, against that delay's own pair
            per_delay = Run.parse(run.task, f"boosted-d{run.delay}")
            assert evaluate[evaluate.index("--paired-with") + 1] == per_delay.eval_rows().as_posix()
            assert int(evaluate[evaluate.index("--delay") + 1]) == run.delay
            assert evaluate[evaluate.index("--run") + 1] == run.name
            assert run.checkpoint().parent.name == VARIABLE
        elif run.kind != "vanilla":
            assert evaluate[evaluate.index("--paired-with") + 1] == Run.parse(run.task, "medium").eval_rows().as_posix()
        train = stages[run.train_stage].split()
        assert train[train.index("--out") + 1] == run.checkpoint_dir().as_posix()
        assert train[train.index("--live") + 1] == run.live_dir().as_posix()
        assert train[train.index("--model") + 1] == run.model
        if run.delay is not None and run.kind != "variable":
            assert int(train[train.index("--delay") + 1]) == run.delay


@pytest.mark.parametrize("name, kind, delay, compression", [
    ("mixture", "mixture", None, None), ("medium", "vanilla", None, None),
    ("boosted-d6", "boosted", 6, 1), ("boosted-d0-p4", "ablation", 0, 4), ("boosted-d6-int4", "hint_cost", 6, 1),
    ("boosted-var-d3", "variable", 3, 1)])
def test_a_run_name_parses_back_to_its_run(name, kind, delay, compression):
    run = Run.parse("ss", name)
    assert (run.kind, run.delay, run.compression) == (kind, delay, compression)
    assert run.trained == {"hint_cost": "boosted-d6", "variable": VARIABLE}.get(kind, name)


def test_the_link_study_stage_passes_the_paths_of_kboost_runs(stages):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for task in params["tasks"]:
        command = stages[f"evaluate_link@{task}"].split()
        assert command[command.index("--rows") + 1] == link_rows(task).as_posix()
        assert command[command.index("--summary") + 1] == link_summary(task).as_posix()
        fixed = Run.parse(task, f"boosted-d{params['delay']}")
        assert command[command.index("--fixed") + 1] == fixed.checkpoint().as_posix()
        assert command[command.index("--fixed-rows") + 1] == fixed.eval_rows().as_posix()
        assert command[command.index("--variable") + 1] == Run.parse(task, f"{VARIABLE}-d0").checkpoint().as_posix()


def test_an_unknown_run_name_is_refused_with_the_names_allowed():
    with pytest.raises(ValueError, match="boosted-d<C>"):
        Run.parse("ss", "boosted-6")
