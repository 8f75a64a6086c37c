"""The report stage: tables and figures from metrics files, byte-identical on rerun."""
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from kboost.report import ReportError, Study, all_tables, load_reported, render_figures, render_tables

ROOT = Path(__file__).resolve().parents[1]
RUNS = ["mixture", "small", "medium", "large", "boosted-d0", "boosted-d6", "boosted-d6-p2"]
CODECS = {"float32": 32, "float16": 16, "int8": 8, "int4": 4}


def _summary(value: float, perceptual: bool = True) -> dict:
    summary = {"mean": {"si_sdr": value, "si_sdri": value - 1, "pesq": 1.5, "stoi": 0.7},
               "ci95": {"si_sdr": 0.3, "si_sdri": 0.3, "pesq": 0.05, "stoi": 0.01},
               "utterances": 10, "failures": {"pesq": 0, "stoi": 0}}
    if not perceptual:  # evaluate.py --si-sdr-only (the studies beyond the paper)
        for part in ("mean", "ci95", "failures"):
            summary[part] = {k: v for k, v in summary[part].items() if k not in ("pesq", "stoi")}
    return summary


@pytest.fixture()
def study_dir(tmp_path):
    """A fake run: eval summaries for SS and TSE at delays 0 and 6, the committed macs.json."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(tasks=["ss", "tse"], delays=[0, 6], delay=6)
    params["ablation"] = {"compressions": [2], "delays": [6]}
    for t, task in enumerate(("ss", "tse")):
        for r, run in enumerate(RUNS):
            if run.endswith("-p2") and task != "ss":
                continue
            path = tmp_path / "metrics" / "eval" / task / f"{run}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            summary = _summary(1.0 + r + t)
            if run.startswith("boosted"):  # paired with medium (run index 2), as evaluate_boosted writes it
                summary["paired"] = {"against": "medium", "utterances": 10, "si_sdri": {"mean": r - 2.0, "ci95": 0.2}}
                summary["hint"] = {"codec": "float32", "bits_per_hint": 776 * 32, "kbit_per_second": 3104.0}
            path.write_text(json.dumps(summary))
        for k, (codec, bits) in enumerate(list(CODECS.items())[1:], start=1):  # evaluate_hint_cost@<task>-<codec>
            summary = _summary(6.0 + t - 0.5 * k, perceptual=False)
            summary["paired"] = {"against": "boosted-d6", "utterances": 10, "si_sdri": {"mean": -0.5 * k, "ci95": 0.1}}
            summary["hint"] = {"codec": codec, "bits_per_hint": 776 * bits + 32 * (bits < 16),
                               "kbit_per_second": (776 * bits + 32 * (bits < 16)) * 125 / 1000}
            (tmp_path / "metrics" / "eval" / task / f"boosted-d6-{codec}.json").write_text(json.dumps(summary))
        for delay in (0, 6):  # evaluate_variable@<task>-<delay>: paired with boosted-d<delay>
            summary = _summary(4.0 + t + delay / 6, perceptual=False)
            summary["paired"] = {"against": f"boosted-d{delay}", "utterances": 10,
                                 "si_sdri": {"mean": -0.25 - delay / 12, "ci95": 0.1}}
            (tmp_path / "metrics" / "eval" / task / f"boosted-var-d{delay}.json").write_text(json.dumps(summary))
        results = [{"pair": pair, "sweep": sweep, "loss_rate": loss, "jitter": jitter, "frames_with_hint": 1 - loss,
                    "si_sdri": {"mean": 5.0 + t - 4 * loss - jitter / 4 - (pair == "variable") * 0.5, "ci95": 0.2}}
                   for sweep, loss, jitter in (("loss", 0.0, 0.0), ("loss", 0.2, 0.0), ("jitter", 0.0, 2.0))
                   for pair in ("fixed", "variable")]
        results += [{"pair": pair, "sweep": "none", "loss_rate": None, "jitter": None, "frames_with_hint": 0.0,
                     "si_sdri": {"mean": 1.5 + t + (pair == "variable") * 0.25, "ci95": 0.1}} for pair in ("fixed", "variable")]
        (tmp_path / "metrics" / "eval" / task / "link.json").write_text(json.dumps({  # evaluate_link@<task>
            "task": task, "utterances": 10, "base_delay": 6, "results": results, "floors": {"small": 1.0, "medium": 2.0},
            "link": {"burst_chunks": 4, "jitter": "geometric", "policy": "newest", "max_age": 16}}))
        live = tmp_path / "metrics" / "train" / task / "small" / "plots" / "metrics"
        live.mkdir(parents=True)
        (live / "val_si_snri.tsv").write_text("step\tval_si_snri\n1\t-3.0\n2\t-1.5\n")
        boosted = tmp_path / "metrics" / "train" / task / "boosted-d6" / "plots" / "metrics"
        boosted.mkdir(parents=True)
        (boosted / "val_si_snri.tsv").write_text("step\tval_si_snri\n1\t-1.0\n")
    shutil.copy(ROOT / "metrics" / "macs.json", tmp_path / "metrics" / "macs.json")
    shutil.copytree(ROOT / "paper" / "templates", tmp_path / "paper" / "templates")
    shutil.copy(ROOT / "paper" / "reported.yaml", tmp_path / "paper" / "reported.yaml")
    return tmp_path, params


def _render(root: Path, params: dict, out: Path) -> dict[str, bytes]:
    study = Study(params, root)
    tables = all_tables(study, load_reported(root / "paper" / "reported.yaml"))
    paths = render_tables(tables, root / "paper" / "templates", out / "tables") + render_figures(study, out / "figures")
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in paths}


def test_tables_and_figures_come_from_metrics_and_are_byte_identical(study_dir, tmp_path):
    root, params = study_dir
    first = _render(root, params, tmp_path / "a")
    second = _render(root, params, tmp_path / "b")
    assert first == second
    assert {"tables/main.md", "tables/main.tex", "tables/delays.md", "tables/ablation.md", "tables/complexity.md",
            "tables/paper_vs_run.md", "figures/sisdri_vs_delay.png", "figures/sisdri_vs_delay.pdf",
            "figures/gain_vs_gap.png", "figures/training_curves.png", "tables/hint_cost.md",
            "figures/sisdri_vs_bitrate.png", "tables/variable_delay.md", "tables/link.md",
            "figures/sisdri_vs_delay_variable.png", "figures/sisdri_vs_loss.png", "figures/sisdri_vs_jitter.png"} <= set(first)
    variable = first["tables/variable_delay.md"].decode()
    # TSE (t = 1) at delay 6: per-delay pair run index 5 -> 6.00; variable 4 + 1 + 1 - 1 = 5.00, paired -0.75
    assert "| TSE | 6 | 48 | 6.00 ± 0.30 | 5.00 ± 0.30 | -0.75 ± 0.10 |" in variable
    link = first["tables/link.md"].decode()
    # SS (t = 0) at 20% loss: fixed 5 - 0.8 = 4.20, variable 3.70; 80% of frames with a hint
    assert "| SS | loss | 20 | 0 | 80.0 | 4.20 ± 0.20 | 3.70 ± 0.20 | 1.00 | 2.00 |" in link
    assert "| TSE | jitter | 0 | 2 | 100.0 | 5.50 ± 0.20 | 5.00 ± 0.20 | 1.00 | 2.00 |" in link
    assert "| SS | no hints | - | - | 0.0 | 1.50 ± 0.10 | 1.75 ± 0.10 | 1.00 | 2.00 |" in link
    hint_cost = first["tables/hint_cost.md"].decode()
    # TSE (t = 1) with int8 (k = 2): si_sdri = 6 + 1 - 1 - 1 = 5.00; 776 x 8 + 32 bits a hint
    assert "| TSE | int8 | 8 | 6,240 | 780 | 5.00 ± 0.30 | -1.00 ± 0.10 |" in hint_cost
    assert "| SS | float32 | 32 | 24,832 | 3104 | 5.00 ± 0.30 | +0.00 |" in hint_cost
    main = first["tables/main.md"].decode()
    # SS boosted-d6 is run index 5: si_sdri = 1 + 5 + 0 - 1 = 5.00, with its CI.
    assert "| SS | boosted small (delay 6) | 5.00 ± 0.30 |" in main
    lines = [line for line in main.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in lines}) == 1  # a well-formed Markdown table
    versus = first["tables/paper_vs_run.md"].decode()
    # gain over medium at 48 ms for SS: (5 - 1) - (2 + 0 - 1)... boosted-d6 5.00 minus medium 2.00 = +3.00
    assert "| SS | +2.31 | +3.00 | +0.69 |" in versus
    assert "not the paper's setting" in versus
    delays = first["tables/delays.md"].decode()
    assert "| SS | boosted small | 6 | 48 | 5.00 ± 0.30 | +3.00 ± 0.20 |" in delays
    assert "\\begin{tabular}" in first["tables/main.tex"].decode()
    assert "$\\pm$" in first["tables/main.tex"].decode()


def test_missing_metrics_name_the_stage_to_run(study_dir, tmp_path):
    root, params = study_dir
    (root / "metrics" / "eval" / "tse" / "boosted-d0.json").unlink()
    with pytest.raises(ReportError, match=r"boosted-d0.json: missing; run `dvc repro evaluate_boosted@tse-0` first"):
        _render(root, params, tmp_path / "out")
    (root / "metrics" / "eval" / "ss" / "boosted-d6-p2.json").unlink()
    params["tasks"] = ["ss"]
    with pytest.raises(ReportError, match=r"evaluate_ablation@2-6"):
        _render(root, params, tmp_path / "out")


def _fake_examples(out: Path) -> dict:
    """A manifest like the examples stage writes, with tiny real FLAC files."""
    import numpy as np

    from kboost.audio import write_audio

    files = {"mixture": ["ss/mixture.flac"], "target": ["ss/target-s1.flac", "ss/target-s2.flac"],
             "small": ["ss/small-s1.flac", "ss/small-s2.flac"]}
    for names in files.values():
        for name in names:
            write_audio(out / "audio" / name, 0.1 * np.sin(np.arange(3200) / 5.0)[None].repeat(2, 0), 16000)
    return {"index": 0, "tasks": {"ss": {"mixture_id": "ss-test-000000", "files": files, "si_sdr": {"small": 1.5}}}}


def test_results_page_references_tables_figures_and_audio_relatively(study_dir, tmp_path):
    from kboost.report import render_page

    root, params = study_dir
    out = tmp_path / "paper"
    study = Study(params, root)
    reported = load_reported(root / "paper" / "reported.yaml")
    tables = all_tables(study, reported)
    figures = render_figures(study, out / "figures")
    page = render_page(study, tables, figures, reported, root / "paper" / "templates", out, _fake_examples(out))
    html = page.read_text()
    assert html.count("<table") == len(tables) + 1  # the tables and one audio table
    assert 'src="figures/sisdri_vs_delay.png"' in html and "http" not in html.split("<body>")[1]
    assert 'src="audio/ss/small-s2.flac"' in html and "±" in html
    again = render_page(study, tables, figures, reported, root / "paper" / "templates", out, _fake_examples(out))
    assert again.read_text() == html


_PROBE = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const imgs = [...document.images].map(i => i.complete && i.naturalWidth > 0);
  const audio = [...document.querySelectorAll('audio')];
  Promise.all(audio.map(a => new Promise(ok => { a.onloadedmetadata = () => ok(true); a.onerror = () => ok(false);
                                                 a.preload = 'metadata'; a.load(); })))
    .then(loaded => setTimeout(() => {
      const notice = document.getElementById('audio-missing');
      document.body.setAttribute('data-probe', JSON.stringify(
        {tables: document.querySelectorAll('table').length, imgs, audio: loaded,
         missing_notice: notice ? !notice.hidden : null}));
    }, 200));
}, 100));
</script>"""


def _open_in_chromium(page: Path, tmp_path: Path) -> dict:
    """What loaded when headless Chromium opened ``page`` (a copy beside it with the probe added)."""
    import html as html_lib

    from browser import dump_dom

    probe = page.with_name(f".probe-{page.name}")  # beside the page: its relative references resolve
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    marker = 'data-probe="'
    try:
        dom = dump_dom(probe, tmp_path / "profile", until=marker)
    finally:
        probe.unlink()
    assert marker in dom, dom[-2000:]
    return json.loads(html_lib.unescape(dom.split(marker, 1)[1].split('"', 1)[0]))


def test_results_page_loads_in_headless_chromium(study_dir, tmp_path):
    from kboost.report import render_page

    root, params = study_dir
    out = tmp_path / "paper"
    study = Study(params, root)
    reported = load_reported(root / "paper" / "reported.yaml")
    tables = all_tables(study, reported)
    page = render_page(study, tables, render_figures(study, out / "figures"), reported,
                       root / "paper" / "templates", out, _fake_examples(out))
    state = _open_in_chromium(page, tmp_path)
    assert state["tables"] == len(tables) + 1
    assert state["imgs"] and all(state["imgs"])
    assert state["audio"] and all(state["audio"])
    assert state["missing_notice"] is False
    for flac in (out / "audio").rglob("*.flac"):  # a fresh clone: the page, not the DVC-cached audio
        flac.unlink()
    state = _open_in_chromium(page, tmp_path)
    assert state["imgs"] and all(state["imgs"]) and not any(state["audio"])
    assert state["missing_notice"] is True


def test_the_committed_results_page_loads_in_headless_chromium(tmp_path):
    """paper/index.html as committed: every table and figure is there, and every audio player
    either plays or (fresh clone, audio only in the DVC cache) the page says why not."""
    paper = ROOT / "paper"
    html = (paper / "index.html").read_text()
    page = tmp_path / "paper" / "index.html"  # a copy whose folders link to the committed ones
    page.parent.mkdir()
    page.write_text(html)
    for folder in ("figures", "audio"):
        if (paper / folder).exists():
            (page.parent / folder).symlink_to(paper / folder)
    state = _open_in_chromium(page, tmp_path)
    assert state["tables"] == html.count("<table") and state["tables"] >= 6
    assert state["imgs"] and all(state["imgs"]) and len(state["imgs"]) == html.count("<img")
    assert state["audio"] and len(state["audio"]) == html.count("<audio")
    present = [(paper / src).is_file() for src in re.findall(r'<audio[^>]* src="([^"]+)"', html)]
    assert state["audio"] == present
    assert state["missing_notice"] is (not all(present))


def test_learning_curves_are_against_clips_seen_and_warm_starts_continue(study_dir):
    from kboost.report import training_curves

    root, params = study_dir
    train = params["profiles"]["demo"]["train"]
    per_epoch, small_epochs = train["train_mixtures"], train["epochs"]["small"]
    curves = training_curves(Study(params, root))["ss"]
    assert curves["small"] == [(per_epoch, -3.0), (2 * per_epoch, -1.5)]
    start = small_epochs * per_epoch if train["boosted_init"] == "small" else 0
    assert curves["boosted-d6"] == [(start + per_epoch, -1.0)]


def test_the_results_view_holds_the_headline_numbers_of_every_trained_run(study_dir, tmp_path):
    from kboost.report import results_view, write_results

    root, params = study_dir
    view = results_view(Study(params, root), load_reported(root / "paper" / "reported.yaml"))
    names = {(run.task, run.name) for run in view}
    assert names == ({(task, run) for task in ("ss", "tse") for run in RUNS[1:] if not (task == "tse" and "-p" in run)}
                     | {(task, f"boosted-d6-{codec}") for task in ("ss", "tse") for codec in list(CODECS)[1:]}
                     | {(task, f"boosted-var-d{delay}") for task in ("ss", "tse") for delay in (0, 6)})
    written = write_results(view, tmp_path / "results")
    ss_d6 = json.loads((tmp_path / "results" / "ss" / "boosted-d6.json").read_text())
    # RUNS index 5, task 0: si_sdri = 1 + 5 - 1; paired gain 5 - 2; the paper's SS gain at 6 chunks
    assert ss_d6 == {"si_sdri": 5.0, "pesq": 1.5, "stoi": 0.7, "gain": 3.0, "paper_gain": 2.31}
    assert "paper_gain" not in json.loads((tmp_path / "results" / "ss" / "boosted-d6-p2.json").read_text())
    assert set(json.loads((tmp_path / "results" / "tse" / "medium.json").read_text())) == {"si_sdri", "pesq", "stoi"}
    assert json.loads((tmp_path / "results" / "tse" / "boosted-d6-int8.json").read_text()) == {
        "si_sdri": 5.0, "kbit_s": 780.0, "change": -1.0}
    assert json.loads((tmp_path / "results" / "ss" / "boosted-var-d6.json").read_text()) == {
        "si_sdri": 4.0, "change": -0.75}
    assert len(written) == len(view)
