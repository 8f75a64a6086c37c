"""A real `dvc repro` of the smoke profile in a temporary copy of the repository."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(args, cwd, check=True):
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _set_params(path: Path, *overrides: str) -> None:
    """Edit params.yaml as `dvc exp run -S key=value` does (DVC's own writer)."""
    from dvc.utils.hydra import apply_overrides

    before = path.read_text()
    apply_overrides(path, list(overrides))
    assert path.read_text() != before, overrides


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The working tree's tracked and unignored files, committed in a fresh git repository."""
    dest = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    # One delay and one ablation factor keep the DAG whole (every stage kind) and the test short.
    _set_params(dest / "params.yaml", "profile=smoke", "delays=[2]", "delay=2", "ablation.delays=[2]",
                "ablation.compressions=[4]")
    _run(["git", "init", "-q"], dest)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "init", "--allow-empty"], dest, check=False)
    _run(["git", "add", "-A"], dest)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], dest)
    return dest


def test_smoke_repro_end_to_end(repo):
    _run(["dvc", "repro"], repo)
    for task in ("se", "ss", "tse"):
        for split, count in (("train", 16), ("val", 4), ("test", 4)):
            manifest = pd.read_csv(repo / "data" / "mixtures" / task / split / "manifest.csv")
            assert len(manifest) == count
            assert all((repo / "data" / "mixtures" / task / split / p).is_file() for p in manifest["path_mixture"])
    assert (repo / "data" / "mixtures" / "tse" / "test" / "embeddings.npy").is_file()
    runs = ["small", "medium", "large", "boosted-d2"]
    for task in ("se", "ss", "tse"):
        for run in runs + ["mixture"]:
            summary = json.loads((repo / "metrics" / "eval" / task / f"{run}.json").read_text())
            assert summary["utterances"] == 4, (task, run)
            rows = pd.read_csv(repo / "data" / "eval" / task / f"{run}.csv")
            assert len(rows) == 4
        for run in runs:
            assert (repo / "data" / "models" / task / run / "best.pt").is_file()
            assert (repo / "metrics" / "train" / task / run / "metrics.json").is_file()
    assert (repo / "metrics" / "eval" / "ss" / "boosted-d2-p4.json").is_file()
    boosted = json.loads((repo / "metrics" / "eval" / "ss" / "boosted-d2.json").read_text())
    assert boosted["streaming"] and boosted["delay"] == 2
    # `dvc metrics show` is the study at a glance: one line per run, a few columns, a terminal's width.
    shown = _run(["dvc", "metrics", "show"], repo).stdout.splitlines()
    # no delay 6: no paper_gain; kbit_s and change: the hint-cost and variable-delay runs
    assert shown[0].split() == ["Path", "change", "gain", "kbit_s", "pesq", "si_sdri", "stoi"], shown[0]
    # per task 3 vanilla, boosted-d2, 3 codecs, the variable-delay pair at 2; the SS ablation pair
    assert len(shown) == 1 + 3 * 8 + 1 and max(map(len, shown)) <= 100, shown
    result = json.loads((repo / "metrics" / "results" / "ss" / "boosted-d2.json").read_text())
    assert result["si_sdri"] == round(boosted["mean"]["si_sdri"], 2)
    assert result["gain"] == round(boosted["paired"]["si_sdri"]["mean"], 2) and "paper_gain" not in result
    variable = json.loads((repo / "metrics" / "eval" / "ss" / "boosted-var-d2.json").read_text())
    assert variable["delay"] == 2 and variable["delay_range"] == [0, 6] and variable["paired"]["against"] == "boosted-d2"
    link = json.loads((repo / "metrics" / "eval" / "ss" / "link.json").read_text())
    assert link["utterances"] == 4 and link["base_delay"] == 2
    assert {(e["pair"], e["sweep"]) for e in link["results"]} == {
        (pair, sweep) for pair in ("fixed", "variable") for sweep in ("loss", "jitter", "none")}
    # the perfect link, whole clips, gives the pair's own (streamed) evaluation
    assert link["check"]["max_abs_si_sdri_difference"] <= 1e-3
    status = _run(["dvc", "status"], repo)
    assert "up to date" in status.stdout
    again = _run(["dvc", "repro"], repo)
    assert "didn't change, skipping" in again.stdout or "up to date" in again.stdout


def test_an_in_place_edit_of_an_output_cannot_reach_the_cache(repo):
    """cache.type = copy: workspace files are copies, so editing one (even as root, which
    ignores read-only bits) leaves the cache intact; dvc status reports the edit and dvc
    checkout restores the original bytes."""
    speech = repo / "data" / "corpus" / "speech"
    victim = next(p for p in sorted(speech.rglob("*")) if p.is_file() and p.suffix != ".csv")
    original = victim.read_bytes()
    with open(victim, "r+b") as handle:  # in place: same inode, as `truncate` or an editor would
        handle.truncate(len(original) // 2)
    status = json.loads(_run(["dvc", "status", "--json"], repo).stdout)
    assert "get_data@speech" in status, status
    _run(["dvc", "checkout", "--force", "data/corpus/speech"], repo)
    assert victim.read_bytes() == original
    assert "get_data@speech" not in json.loads(_run(["dvc", "status", "--json"], repo).stdout)


def test_invalid_param_stops_first_stage_with_clear_message(repo):
    params = repo / "params.yaml"
    original = params.read_text()
    try:
        _set_params(params, "data.se.snr_db=[10,-5]")
        result = _run(["dvc", "repro", "--force", "get_data@speech"], repo, check=False)
        assert result.returncode != 0
        assert "data.se.snr_db: range is reversed" in result.stderr + result.stdout
    finally:
        params.write_text(original)
        _run(["dvc", "checkout"], repo)  # the forced, failed stage removed its output; restore it from the cache


def test_new_delay_trains_only_its_own_stages_and_bad_delay_fails_at_once(repo):
    params = repo / "params.yaml"
    original = params.read_text()
    try:
        _set_params(params, "delays=[2,3]")
        planned = sorted(json.loads(_run(["dvc", "status", "--json"], repo).stdout))
        # Only the new delay's training and evaluation (and the variable-delay pair's evaluation at it), plus the
        # audio examples and the report that list delays.
        assert planned == ["evaluate_boosted@se-3", "evaluate_boosted@ss-3", "evaluate_boosted@tse-3",
                           "evaluate_variable@se-3", "evaluate_variable@ss-3", "evaluate_variable@tse-3", "examples",
                           "report", "train_boosted@se-3", "train_boosted@ss-3", "train_boosted@tse-3"], planned
        params.write_text(original)
        _set_params(params, "delay=5")
        result = _run(["dvc", "repro"], repo, check=False)
        assert result.returncode != 0
        assert "delay: 5 is not one of delays [2]" in result.stderr + result.stdout
        assert "dvc exp run -S 'delays=[2, 5]' -S delay=5" in result.stderr + result.stdout
    finally:
        params.write_text(original)


def test_metrics_and_params_diff_between_two_commits(repo):
    """The README's worked example: commit a run, change something, commit again, diff."""
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    _run(["git", "add", "-A"], repo)
    _run(git + ["commit", "-qm", "smoke run", "--allow-empty"], repo)
    summary_path = repo / "metrics" / "results" / "ss" / "small.json"
    original_summary, params_text = summary_path.read_text(), (repo / "params.yaml").read_text()
    try:
        summary = json.loads(original_summary)
        summary["si_sdri"] = (summary["si_sdri"] or 0.0) + 1.5  # as a retrained model would
        summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        _set_params(repo / "params.yaml", "seed=43")
        _run(["git", "add", "-A"], repo)
        _run(git + ["commit", "-qm", "changed"], repo)
        metrics = _run(["dvc", "metrics", "diff", "HEAD~1", "HEAD"], repo).stdout
        assert "metrics/results/ss/small.json" in metrics and "si_sdri" in metrics and "1.5" in metrics
        params = _run(["dvc", "params", "diff", "HEAD~1", "HEAD"], repo).stdout
        assert "seed" in params and "42" in params and "43" in params
    finally:
        summary_path.write_text(original_summary)
        (repo / "params.yaml").write_text(params_text)
