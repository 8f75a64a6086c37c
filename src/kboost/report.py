"""The paper's tables and figures, regenerated from the metrics files the stages wrote.

Nothing here is typed by hand: every number comes from metrics/eval/<task>/<run>.json,
metrics/macs.json or a DVCLive log, and the figures the paper reports come from
paper/reported.yaml (with their source). Same inputs, byte-identical outputs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import KboostError
from .hint_codec import get_codec
from .runs import (EVAL_METRICS_DIR, TRAIN_METRICS_DIR, VANILLA, VARIABLE, Run, clips_before, clips_per_epoch, link_summary,
                   run_name, study_runs)
from .tasks import TASKS

CHUNK_MS = 8


class ReportError(KboostError, ValueError):
    """Missing or unusable metrics; the message names the stage that writes them."""


@dataclass
class Table:
    """One table: column headers, rows of cells (strings) and a caption."""

    name: str
    caption: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ inputs
def load_summary(task: str, run: str, eval_dir: Path = EVAL_METRICS_DIR) -> dict:
    """The evaluation summary of a run (or, ``run`` "link", the link study of ``task``)."""
    if run == "link":
        stage, path = f"evaluate_link@{task}", link_summary(task, eval_dir)
    else:
        stage, path = Run.parse(task, run).eval_stage, Run.parse(task, run).eval_summary(eval_dir)
    if not path.is_file():
        raise ReportError(f"{path}: missing; run `dvc repro {stage}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc}); rerun `dvc repro -f {stage}`") from exc


def load_macs(path: Path = Path("metrics/macs.json")) -> dict:
    if not path.is_file():
        raise ReportError(f"{path}: missing; run `dvc repro macs` first")
    return json.loads(path.read_text())


def load_reported(path: Path) -> dict:
    if not path.is_file():
        raise ReportError(f"{path}: missing: the figures the paper reports (with their source)")
    return yaml.safe_load(path.read_text())


# ----------------------------------------------------------------------------- formatting
def fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def with_ci(summary: dict, metric: str, digits: int = 2) -> str:
    mean, half = summary["mean"].get(metric), summary["ci95"].get(metric)
    if mean is None:
        return "n/a"
    return f"{fmt(mean, digits)} ± {fmt(half, digits)}" if half is not None else fmt(mean, digits)


def millions(value: float) -> str:
    return f"{value / 1e6:.2f} M"


def signed(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


# ---------------------------------------------------------------------------------- study
class Study:
    """The metrics of one run of the pipeline, as params.yaml describes it."""

    def __init__(self, params: dict, root: Path = Path("."), *, eval_dir: Path | None = None,
                 train_dir: Path | None = None, macs_path: Path | None = None):
        """Metrics under ``root`` where dvc.yaml puts them, or at the paths given."""
        self.params = params
        self.eval_dir = Path(eval_dir) if eval_dir is not None else root / EVAL_METRICS_DIR
        self.train_dir = Path(train_dir) if train_dir is not None else root / TRAIN_METRICS_DIR
        self.tasks = list(params["tasks"])
        self.delay = int(params["delay"])
        self.delays = sorted(int(d) for d in params["delays"])
        self.compression = int(params["model"]["compression"])
        self.ablation = params["ablation"]
        self.macs = load_macs(Path(macs_path) if macs_path is not None else root / "metrics" / "macs.json")
        self._cache: dict[tuple[str, str], dict] = {}

    def summary(self, task: str, run: str) -> dict:
        key = (task, run)
        if key not in self._cache:
            self._cache[key] = load_summary(task, run, self.eval_dir)
        return self._cache[key]

    def boosted(self, delay: int, compression: int | None = None) -> str:
        return run_name("boosted", delay, compression or self.compression, self.compression)

    def device_macs(self, task: str, model: str, scale: str = "profile_sizes") -> dict:
        """MACs and parameters of a model as run on its side (boosted small = small + merges)."""
        key = "boosted_small" if model.startswith("boosted") else model
        return self.macs["reports"][scale][task]["models"][key]

    def si_sdri(self, task: str, run: str) -> float | None:
        return self.summary(task, run)["mean"]["si_sdri"]

    def link(self, task: str) -> dict:
        """The link study's summary of ``task`` (evaluate_link)."""
        return self.summary(task, "link")


# --------------------------------------------------------------------------------- tables
def main_table(study: Study) -> Table:
    label = {"small": "small (vanilla)", "medium": "medium (vanilla, boosted-small size)", "large": "large (vanilla)"}
    table = Table("main", f"Test results at the headline delay of {study.delay} chunks "
                          f"({study.delay * CHUNK_MS} ms); mean ± 95% confidence half-width over test utterances. "
                          f"MACs are the model's own side per 8 ms chunk, at this run's sizes.",
                  ["task", "model", "SI-SDRi (dB)", "PESQ", "STOI", "parameters", "MACs / chunk", "MACs / s"])
    for task in study.tasks:
        for run in ("small", "medium", "large", study.boosted(study.delay)):
            summary = study.summary(task, run)
            macs = study.device_macs(task, run)
            name = label.get(run, f"boosted small (delay {study.delay})")
            table.rows.append([TASKS[task].label, name, with_ci(summary, "si_sdri"), with_ci(summary, "pesq"),
                               with_ci(summary, "stoi", 3), f"{macs['params']:,}", millions(macs["macs_per_chunk"]),
                               millions(macs["macs_per_second"])])
    return table


def paired_gain(summary: dict) -> str:
    """This run minus the run it was paired with (boosted: medium; hint cost: float32; variable
    delay: that delay's own pair), utterance by utterance: mean ± 95% half-width (dB)."""
    paired = summary.get("paired", {}).get("si_sdri")
    if not paired or paired.get("mean") is None:
        return "n/a"
    half = paired.get("ci95")
    return signed(paired["mean"]) + ("" if half is None else f" ± {fmt(half)}")


def delay_table(study: Study) -> Table:
    table = Table("delays", "Boosted small model versus communication delay, with the vanilla models as reference "
                            "(SI-SDRi in dB, mean ± 95% confidence half-width). Gain over medium: the boosted "
                            "small model minus the vanilla model of its size on the same test utterances, mean "
                            "± 95% confidence half-width of the per-utterance differences; an interval that "
                            "excludes 0 is a resolved difference.",
                  ["task", "model", "delay (chunks)", "delay (ms)", "SI-SDRi (dB)", "gain over medium (dB)"])
    for task in study.tasks:
        for run in VANILLA:
            table.rows.append([TASKS[task].label, f"{run} (vanilla)", "-", "-", with_ci(study.summary(task, run), "si_sdri"),
                               "-" if run != "medium" else signed(0.0)])
        for delay in study.delays:
            summary = study.summary(task, study.boosted(delay))
            table.rows.append([TASKS[task].label, "boosted small", str(delay), str(delay * CHUNK_MS),
                               with_ci(summary, "si_sdri"), paired_gain(summary)])
    return table


def ablation_table(study: Study) -> Table | None:
    if "ss" not in study.tasks or not study.ablation["compressions"] or not study.ablation["delays"]:
        return None
    table = Table("ablation", "Compression ablation (SS): hint channels cut by P before sending; SI-SDRi in dB; "
                              "gain over medium as in the delay table (paired, per utterance).",
                  ["delay (chunks)", "P", "hint channels", "hint stream (kbit/s)", "SI-SDRi (dB)",
                   "gain over medium (dB)"])
    channels = 2 * TASKS["ss"].output_channels  # real and imaginary part of every output channel
    for delay in sorted(study.ablation["delays"]):
        for p in sorted({study.compression, *study.ablation["compressions"]}):
            run = study.boosted(delay, p)
            summary = study.summary("ss", run)
            table.rows.append([str(delay), str(p), str(channels // p), f"{hint_kbit_per_second(study, 'ss', p):,.0f}",
                               with_ci(summary, "si_sdri"), paired_gain(summary)])
    return table


def hint_kbit_per_second(study: Study, task: str, compression: int, codec: str = "float32",
                         scale: str = "profile_sizes") -> float:
    """Bit rate of the hint stream of ``task`` at compression P (macs.json: values of one hint)."""
    values = study.macs["reports"][scale][task]["hint_values_per_chunk"][str(compression)]
    return get_codec(codec).kbit_per_second(values, study.macs["chunks_per_second"])


def complexity_table(study: Study) -> Table:
    paper = study.macs.get("paper_reduction_macs_per_chunk", {})
    ps = sorted(int(p) for p in study.macs["reports"]["profile_sizes"][study.tasks[0]]["hint_values_per_chunk"])
    table = Table("complexity", "Parameters and MACs per 8 ms chunk (streaming, warm state; x125 per second) at the "
                                "paper's sizes and at this run's sizes; reduction = medium minus boosted small; "
                                "hint stream: what the remote side sends, float32 (values per chunk x 32 bits x "
                                "125 chunks/s), at each compression P.",
                  ["scale", "task", "small", "medium", "boosted small (device)", "large + compression (remote)",
                   "reduction", "paper's reduction", f"hint stream (kbit/s, P = {' / '.join(map(str, ps))})"])
    for scale, label in (("paper_sizes", "paper"), ("profile_sizes", f"this run ({study.macs['profile']})")):
        for task in study.tasks:
            models = study.macs["reports"][scale][task]["models"]

            def cell(key: str) -> str:
                return f"{models[key]['params']:,} p / {millions(models[key]['macs_per_chunk'])}"

            reduction = study.macs["reduction_macs_per_chunk"][scale][task]
            hints = study.macs["reports"][scale][task]["hint_values_per_chunk"]
            rates = " / ".join(f"{hint_kbit_per_second(study, task, p, scale=scale):,.0f}" if str(p) in hints else "n/a" for p in ps)
            table.rows.append([label, TASKS[task].label, cell("small"), cell("medium"), cell("boosted_small"),
                               cell("remote_total"), millions(reduction),
                               millions(paper[task]) if task in paper else "n/a", rates])
    table.notes.extend(_convention_notes(study.macs["convention"]))
    return table


def hint_cost_rows(study: Study, task: str) -> list[tuple[str, dict]]:
    """(codec, evaluation summary) of the headline pair with every codec, float32 (as trained) first."""
    float32 = study.boosted(study.delay)
    return [("float32", study.summary(task, float32))] + [(codec, study.summary(task, f"{float32}-{codec}"))
                                                          for codec in study.params["hint_cost"]["codecs"]]


def hint_cost_table(study: Study) -> Table:
    table = Table("hint_cost", f"What a hint costs to send (beyond the paper): the boosted pairs of delay {study.delay} "
                               f"({study.delay * CHUNK_MS} ms) with their hints quantised before sending, evaluation "
                               f"only (no retraining); integer codecs scale each frame by its peak and send that "
                               f"float32 scale along. Change: this codec minus float32 on the same test utterances "
                               f"(paired mean ± 95% confidence half-width).",
                  ["task", "codec", "bits / value", "bits / hint", "hint stream (kbit/s)", "SI-SDRi (dB)",
                   "change vs float32 (dB)"])
    for task in study.tasks:
        for codec, summary in hint_cost_rows(study, task):
            hint = summary.get("hint", {})
            change = signed(0.0) if codec == "float32" else paired_gain(summary)
            bits = hint.get("bits_per_hint")
            table.rows.append([TASKS[task].label, codec, str(get_codec(codec).bits),
                               "n/a" if bits is None else f"{bits:,}", fmt(hint.get("kbit_per_second"), 0),
                               with_ci(summary, "si_sdri"), change])
    return table


def variable_delay_table(study: Study) -> Table:
    low, high = study.params["variable_delay"]["range"]
    table = Table("variable_delay", f"One pair for every delay (beyond the paper): a boosted pair trained once with "
                                    f"the delay drawn per training clip from {low} to {high} chunks (the training "
                                    f"budget of one per-delay pair), evaluated at each delay beside the pair trained "
                                    f"for that delay alone. Change: the variable-delay pair minus the per-delay pair "
                                    f"on the same test utterances (paired mean ± 95% confidence half-width).",
                  ["task", "delay (chunks)", "delay (ms)", "per-delay pair SI-SDRi (dB)",
                   "variable-delay pair SI-SDRi (dB)", "change (dB)"])
    for task in study.tasks:
        for delay in study.delays:
            variable = study.summary(task, f"{VARIABLE}-d{delay}")
            table.rows.append([TASKS[task].label, str(delay), str(delay * CHUNK_MS),
                               with_ci(study.summary(task, study.boosted(delay)), "si_sdri"),
                               with_ci(variable, "si_sdri"), paired_gain(variable)])
    return table


def _mean_ci(entry: dict) -> str:
    value = entry["si_sdri"]
    return fmt(value["mean"]) + ("" if value.get("ci95") is None else f" ± {fmt(value['ci95'])}")


def link_table(study: Study) -> Table:
    first = study.link(study.tasks[0])
    link = first["link"]
    table = Table("link", f"Hints over a link with jitter and loss (beyond the paper): base delay {study.delay} chunks "
                          f"({study.delay * CHUNK_MS} ms), losses in Gilbert-Elliott bursts of {fmt(link['burst_chunks'], 1)} "
                          f"hints on average, {link['jitter']} jitter; a missing hint is replaced by "
                          + ("the newest hint that arrived (at its true age)" if link["policy"] == "newest"
                             else "zeros (no hint)")
                          + f"; the device keeps {link['max_age']} chunks. SI-SDRi in dB (mean ± 95% confidence "
                          f"half-width) on the first {first['utterances']} test mixtures, the same link realisations for "
                          f"both pairs; floors: the vanilla models on the same mixtures, and each pair with no hints "
                          f"at all (row \"no hints\").",
                  ["task", "sweep", "loss (%)", "mean jitter (chunks)", "frames with any hint (%)",
                   f"pair of delay {study.delay}", "variable-delay pair", "small (vanilla)", "medium (vanilla)"])
    for task in study.tasks:
        summary = study.link(task)
        by_pair = {}
        for entry in summary["results"]:
            by_pair.setdefault((entry["sweep"], entry["loss_rate"], entry["jitter"]), {})[entry["pair"]] = entry
        for (sweep, loss, jitter), pairs in by_pair.items():
            fixed = pairs["fixed"]
            if sweep == "none":  # no hint ever arrives: what the hints add
                table.rows.append([TASKS[task].label, "no hints", "-", "-", fmt(0.0, 1), _mean_ci(fixed),
                                   _mean_ci(pairs["variable"]), fmt(summary["floors"]["small"]),
                                   fmt(summary["floors"]["medium"])])
                continue
            table.rows.append([TASKS[task].label, sweep, fmt(100 * loss, 0), fmt(jitter, 0),
                               fmt(100 * fixed["frames_with_hint"], 1), _mean_ci(fixed), _mean_ci(pairs["variable"]),
                               fmt(summary["floors"]["small"]), fmt(summary["floors"]["medium"])])
    return table


def _convention_notes(convention) -> list[str]:
    """The MAC counting convention of macs.json as readable sentences."""
    if isinstance(convention, str):
        return [convention]
    notes = []
    for key, value in convention.items():
        if isinstance(value, dict):
            value = "; ".join(f"{name.replace('_', ' ')}: {rule}" for name, rule in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        notes.append(f"{key.replace('_', ' ').capitalize()}: {value}.")
    return notes


def paper_vs_run_table(study: Study, reported: dict) -> Table:
    profile = study.params["profile"]
    sources = study.params["profiles"][profile]["data"]["sources"]
    table = Table("paper_vs_run",
                  f"Figures the paper reports versus this run (profile `{profile}`, speech: {sources['speech']}, "
                  f"noise: {sources['noise']}, responses: {sources['responses']}).",
                  ["figure", "task", "paper", "this run", "difference", "source"])
    gain = reported["si_sdr_gain_over_same_size_db"]
    delay = int(gain["delay_chunks"])
    for task in study.tasks:
        paper_value = gain["values"].get(task)
        try:
            ours = study.si_sdri(task, study.boosted(delay)) - study.si_sdri(task, "medium")
        except (ReportError, TypeError):
            ours = None
        table.rows.append([f"SI-SDR gain, boosted small over medium, delay {delay * CHUNK_MS} ms (dB)", TASKS[task].label,
                           signed(paper_value), signed(ours),
                           signed(None if ours is None or paper_value is None else ours - paper_value), gain["source"]])
    reduction = reported["mac_reduction_per_chunk"]
    for task in study.tasks:
        ours = study.macs["reduction_macs_per_chunk"]["paper_sizes"][task]
        paper_value = reduction["values"].get(task)
        table.rows.append(["MACs per chunk saved, boosted small vs medium, paper sizes (M)", TASKS[task].label,
                           fmt(paper_value / 1e6), fmt(ours / 1e6), signed((ours - paper_value) / 1e6),
                           reduction["source"]])
    params = reported["parameters_ss"]
    models = study.macs["reports"]["paper_sizes"].get("ss", {}).get("models", {})
    for model, paper_value in params["values"].items():
        ours = models.get(model, {}).get("params")
        table.rows.append([f"trainable parameters, {model.replace('_', ' ')} (P = 1)", "SS", f"{paper_value:,}",
                           "n/a" if ours is None else f"{ours:,}",
                           "n/a" if ours is None else f"{ours - paper_value:+,}", params["source"]])
    if sources["speech"] == "embedded":
        table.notes.append("This run uses the embedded offline data (synthetic espeak-ng speech, procedural noise, "
                           "simulated rooms) and the demo scale, not the paper's LibriSpeech/WHAM!/measured-response "
                           "data and training length: its SI-SDR figures show how the method behaves here, they are "
                           "not the paper's setting and are not expected to match the paper's numbers.")
    return table


def all_tables(study: Study, reported: dict) -> list[Table]:
    tables = [main_table(study), delay_table(study), ablation_table(study), complexity_table(study),
              hint_cost_table(study), variable_delay_table(study), link_table(study),
              paper_vs_run_table(study, reported)]
    return [t for t in tables if t is not None]


# -------------------------------------------------------------------------- metrics view
def results_view(study: Study, reported: dict) -> dict[Run, dict]:
    """The few numbers per trained run that `dvc metrics show` lists (one file per run, so the
    path says which model and delay): test SI-SDRi, PESQ, STOI (where the run scored them); for a boosted pair its paired gain
    over medium (gain), and where the paper reports that gain (its delay, the main P) the paper's (paper_gain);
    for a hint-cost run the hint stream's kbit_s and its paired change vs its float32 pair (change);
    for the variable-delay pair at a delay its paired change vs that delay's own pair (change)."""
    gain = reported["si_sdr_gain_over_same_size_db"]
    view = {}
    for run in study_runs(study.params):
        if run.kind == "mixture":
            continue
        summary = study.summary(run.task, run.name)
        mean = summary["mean"]
        row = {"si_sdri": _rounded(mean.get("si_sdri"), 2)}
        row.update({m: _rounded(mean[m], digits) for m, digits in (("pesq", 2), ("stoi", 3)) if m in mean})
        paired = _rounded(summary.get("paired", {}).get("si_sdri", {}).get("mean"), 2)
        if run.kind == "hint_cost":
            row.update(kbit_s=_rounded(summary.get("hint", {}).get("kbit_per_second"), 1), change=paired)
        elif run.kind == "variable":
            row["change"] = paired
        elif run.kind != "vanilla":
            row["gain"] = paired
        if run.kind == "boosted" and run.delay == int(gain["delay_chunks"]) and run.task in gain["values"]:
            row["paper_gain"] = gain["values"][run.task]
        view[run] = row
    return view


def _rounded(value, digits: int):
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def write_results(view: dict[Run, dict], out_dir: Path) -> list[Path]:
    """One small JSON per run under ``out_dir`` (<task>/<run>.json)."""
    from .fsutil import write_json

    written = []
    for run, row in view.items():
        path = run.result(out_dir)
        write_json(path, row)
        written.append(path)
    return written


# -------------------------------------------------------------------------------- figures
def training_curves(study: Study) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Validation SI-SNRi from the DVCLive logs against the training clips the model had seen:
    task -> run -> [(clips, value)]. A warm-started boosted pair's clips start where its vanilla
    small model's ended."""
    per_epoch = clips_per_epoch(study.params)
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for task in study.tasks:
        for run in study_runs(study.params):
            if run.task != task or run.kind not in ("vanilla", "boosted", "variable") \
                    or run.trained in curves.get(task, {}):
                continue
            path = run.live_dir(study.train_dir) / "plots" / "metrics" / "val_si_snri.tsv"
            if not path.is_file():
                continue
            offset = clips_before(study.params, task, run.model)
            lines = path.read_text().strip().splitlines()[1:]
            curves.setdefault(task, {})[run.trained] = [(offset + int(a) * per_epoch, float(b))
                                                for a, b in (line.split("\t")[:2] for line in lines)]
    return curves


# ------------------------------------------------------------------------------ rendering
_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "±": r"$\pm$", "`": ""}


def tex_escape(text) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def template_environment(templates: Path):
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined,
                             autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                                                 default_for_string=False))
    env.filters["tex"] = tex_escape
    return env


def render_tables(tables: list[Table], templates: Path, out_dir: Path) -> list[Path]:
    """Write ``<name>.md`` and ``<name>.tex`` for every table; return the paths written."""
    from .fsutil import atomic_file

    env = template_environment(templates)
    written = []
    for table in tables:
        for suffix, template in (("md", "table.md.j2"), ("tex", "table.tex.j2")):
            path = out_dir / f"{table.name}.{suffix}"
            with atomic_file(path) as tmp:
                tmp.write_text(env.get_template(template).render(table=table))
            written.append(path)
    return written


# -------------------------------------------------------------------------------- figures
def _save(fig, out_dir: Path, name: str) -> list[Path]:
    """PNG and PDF without timestamps or version strings, so equal inputs give equal bytes."""
    from .fsutil import atomic_file

    paths = []
    for suffix, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = out_dir / f"{name}.{suffix}"
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=suffix, metadata=metadata, dpi=120, bbox_inches="tight")
        paths.append(path)
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "kboost", "font.size": 9})
    return plt


def _finish(plt, fig, panels, ylabel: str, legend_size: int, out_dir: Path, name: str) -> list[Path]:
    """One y label on the first panel, the legend on the last, then save and close."""
    panels[0].set_ylabel(ylabel)
    panels[-1].legend(fontsize=legend_size, loc="best")
    paths = _save(fig, out_dir, name)
    plt.close(fig)
    return paths


def figure_delay(study: Study, out_dir: Path) -> list[Path]:
    """SI-SDRi versus delay per task, the vanilla models as horizontal lines."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(study.tasks), figsize=(3.2 * len(study.tasks), 2.8), squeeze=False)
    styles = {"small": ("tab:red", ":"), "medium": ("tab:orange", "--"), "large": ("tab:green", "-.")}
    for ax, task in zip(axes[0], study.tasks):
        ms = [d * CHUNK_MS for d in study.delays]
        runs = [study.summary(task, study.boosted(d)) for d in study.delays]
        values = [r["mean"]["si_sdri"] for r in runs]
        errors = [r["ci95"]["si_sdri"] or 0.0 for r in runs]
        ax.errorbar(ms, values, yerr=errors, marker="o", color="tab:blue", capsize=3, label="boosted small")
        for run, (colour, dash) in styles.items():
            ax.axhline(study.si_sdri(task, run), color=colour, linestyle=dash, label=f"{run} (vanilla)")
        ax.set_title(TASKS[task].label)
        ax.set_xlabel("delay (ms)")
        ax.set_xticks(ms)
        ax.grid(alpha=0.3)
    return _finish(plt, fig, axes[0], "SI-SDRi (dB)", 7, out_dir, "sisdri_vs_delay")


def figure_gain_vs_gap(study: Study, out_dir: Path) -> list[Path]:
    """The paper's qualitative claim: boosting helps more where the small/large gap is wider."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 2.8))
    for task in study.tasks:
        gap = study.si_sdri(task, "large") - study.si_sdri(task, "small")
        gain = study.si_sdri(task, study.boosted(study.delay)) - study.si_sdri(task, "medium")
        ax.scatter([gap], [gain], s=30)
        ax.annotate(TASKS[task].label, (gap, gain), textcoords="offset points", xytext=(4, 4))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("large minus small, SI-SDRi (dB)")
    ax.set_ylabel(f"boosted small minus medium (dB)\nat {study.delay * CHUNK_MS} ms delay")
    ax.grid(alpha=0.3)
    paths = _save(fig, out_dir, "gain_vs_gap")
    plt.close(fig)
    return paths


def figure_training(study: Study, out_dir: Path) -> list[Path]:
    """Validation SI-SNRi against training clips seen (DVCLive logs) of every run, one panel per
    task: whether each model had converged."""
    curves = training_curves(study)
    if not curves:
        return []
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 2.8), squeeze=False)
    for ax, (task, runs) in zip(axes[0], curves.items()):
        for run, points in runs.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=run)
        ax.set_title(TASKS[task].label)
        ax.set_xlabel("training clips seen")
        ax.grid(alpha=0.3)
    return _finish(plt, fig, axes[0], "validation SI-SNRi (dB)", 6, out_dir, "training_curves")


def figure_hint_cost(study: Study, out_dir: Path) -> list[Path]:
    """SI-SDRi of the headline pair against the bit rate of its (quantised) hint stream, per task,
    the vanilla small and medium models as the floor lines."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(study.tasks), figsize=(3.2 * len(study.tasks), 2.8), squeeze=False)
    for ax, task in zip(axes[0], study.tasks):
        rows = hint_cost_rows(study, task)
        rates = [summary.get("hint", {}).get("kbit_per_second") for _, summary in rows]
        if any(rate is None for rate in rates):
            raise ReportError(f"metrics/eval/{task}: a boosted summary has no hint entry; rerun `dvc repro` "
                              f"(evaluate_boosted, evaluate_hint_cost)")
        values = [summary["mean"]["si_sdri"] for _, summary in rows]
        errors = [summary["ci95"]["si_sdri"] or 0.0 for _, summary in rows]
        ax.errorbar(rates, values, yerr=errors, marker="o", color="tab:blue", capsize=3,
                    label=f"boosted small, delay {study.delay * CHUNK_MS} ms")
        for (codec, _), rate, value in zip(rows, rates, values):
            ax.annotate(codec, (rate, value), textcoords="offset points", xytext=(3, 4), fontsize=7)
        for run, colour, dash in (("small", "tab:red", ":"), ("medium", "tab:orange", "--")):
            ax.axhline(study.si_sdri(task, run), color=colour, linestyle=dash, label=f"{run} (vanilla)")
        ax.set_xscale("log")
        ax.set_title(TASKS[task].label)
        ax.set_xlabel("hint stream (kbit/s)")
        ax.grid(alpha=0.3)
    return _finish(plt, fig, axes[0], "SI-SDRi (dB)", 7, out_dir, "sisdri_vs_bitrate")


def _floor_lines(ax, floors: dict) -> None:
    for run, colour, dash in (("small", "tab:red", ":"), ("medium", "tab:orange", "--")):
        ax.axhline(floors[run], color=colour, linestyle=dash, label=f"{run} (vanilla)")


def figure_variable_delay(study: Study, out_dir: Path) -> list[Path]:
    """SI-SDRi against delay: the per-delay pairs and the one variable-delay pair, per task."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(study.tasks), figsize=(3.2 * len(study.tasks), 2.8), squeeze=False)
    ms = [d * CHUNK_MS for d in study.delays]
    for ax, task in zip(axes[0], study.tasks):
        for label, runs, colour in (("pair per delay", [study.boosted(d) for d in study.delays], "tab:blue"),
                                    ("one variable-delay pair", [f"{VARIABLE}-d{d}" for d in study.delays],
                                     "tab:purple")):
            summaries = [study.summary(task, run) for run in runs]
            ax.errorbar(ms, [s["mean"]["si_sdri"] for s in summaries], yerr=[s["ci95"]["si_sdri"] or 0.0 for s in summaries],
                        marker="o", color=colour, capsize=3, label=label)
        _floor_lines(ax, {run: study.si_sdri(task, run) for run in ("small", "medium")})
        ax.set_title(TASKS[task].label)
        ax.set_xlabel("delay (ms)")
        ax.set_xticks(ms)
        ax.grid(alpha=0.3)
    return _finish(plt, fig, axes[0], "SI-SDRi (dB)", 7, out_dir, "sisdri_vs_delay_variable")


def figure_link(study: Study, out_dir: Path, sweep: str) -> list[Path]:
    """SI-SDRi of both pairs against the link's loss rate or mean jitter, per task, with the
    vanilla floor lines; the sweep's first point is the perfect link."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(study.tasks), figsize=(3.2 * len(study.tasks), 2.8), squeeze=False)
    key, xlabel = {"loss": ("loss_rate", "hints lost (%)"), "jitter": ("jitter", "mean jitter (chunks)")}[sweep]
    scale = 100 if sweep == "loss" else 1
    for ax, task in zip(axes[0], study.tasks):
        summary = study.link(task)
        for pair, label, colour in (("fixed", f"pair of delay {study.delay}", "tab:blue"),
                                    ("variable", "variable-delay pair", "tab:purple")):
            entries = [e for e in summary["results"] if e["pair"] == pair
                       and (e["sweep"] == sweep or (e["loss_rate"] == 0 and e["jitter"] == 0))]
            none = [e for e in summary["results"] if e["pair"] == pair and e["sweep"] == "none"]
            if pair == "fixed" and none:  # the pair's own floor: no hint ever arrives
                ax.axhline(none[0]["si_sdri"]["mean"], color="grey", linestyle="-.", label=f"{label}, no hints")
            entries.sort(key=lambda e: e[key])
            ax.errorbar([scale * e[key] for e in entries], [e["si_sdri"]["mean"] for e in entries],
                        yerr=[e["si_sdri"]["ci95"] or 0.0 for e in entries], marker="o", color=colour, capsize=3,
                        label=label)
        _floor_lines(ax, summary["floors"])
        ax.set_title(TASKS[task].label)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    return _finish(plt, fig, axes[0], "SI-SDRi (dB)", 7, out_dir, f"sisdri_vs_{sweep}")


def render_figures(study: Study, out_dir: Path) -> list[Path]:
    return (figure_delay(study, out_dir) + figure_gain_vs_gap(study, out_dir) + figure_hint_cost(study, out_dir)
            + figure_variable_delay(study, out_dir) + figure_link(study, out_dir, "loss")
            + figure_link(study, out_dir, "jitter") + figure_training(study, out_dir))


# ----------------------------------------------------------------------------------- page
FIGURE_CAPTIONS = {
    "sisdri_vs_delay": "SI-SDRi of the boosted small model versus communication delay (error bars: 95% confidence "
                       "half-widths), with the vanilla models as horizontal lines.",
    "gain_vs_gap": "Gain of boosting (boosted small minus the same-size vanilla model) versus the gap between the "
                   "large and small vanilla models, per task: the paper's qualitative claim is that the gain grows "
                   "with the gap.",
    "sisdri_vs_bitrate": "Beyond the paper: SI-SDRi of the boosted small model at the headline delay against the "
                         "bit rate of its hint stream, hints quantised before sending (float32 as trained, float16, "
                         "int8, int4; evaluation only), with the vanilla small and medium models as the floor.",
    "sisdri_vs_delay_variable": "Beyond the paper: one boosted pair trained with the delay drawn per training clip, "
                                "evaluated at every delay, beside the pairs trained for one delay each (same training "
                                "budget per pair), with the vanilla small and medium models as the floor.",
    "sisdri_vs_loss": "Beyond the paper: SI-SDRi against the share of hints the link loses (Gilbert-Elliott bursts, "
                      "no jitter), for the headline pair and the variable-delay pair, with the vanilla floor lines.",
    "sisdri_vs_jitter": "Beyond the paper: SI-SDRi against the link's mean jitter beyond the base delay (no loss), "
                        "for the headline pair and the variable-delay pair, with the vanilla floor lines.",
    "training_curves": "Validation SI-SNRi per epoch of every run (DVCLive logs).",
}


def render_page(study: Study, tables: list[Table], figures: list[Path], reported: dict, templates: Path,
                out_dir: Path, examples: dict | None) -> Path:
    """Write ``out_dir/index.html``: tables, figures and audio examples, all paths relative."""
    from .fsutil import atomic_file

    profile = study.params["profile"]
    shown = [{"path": p.relative_to(out_dir).as_posix(), "caption": FIGURE_CAPTIONS.get(p.stem, p.stem)}
             for p in figures if p.suffix == ".png"]
    html = template_environment(templates).get_template("index.html.j2").render(
        paper=reported.get("paper", ""), profile=profile, sources=study.params["profiles"][profile]["data"]["sources"],
        delay=study.delay, delays=study.delays, tables=tables, figures=shown, examples=examples,
        task_names={name: task.label for name, task in TASKS.items()})
    path = out_dir / "index.html"
    with atomic_file(path) as tmp:
        tmp.write_text(html)
    return path
