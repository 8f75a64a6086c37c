"""Learning-speed probe: how much training a model needs before it learns a task at demo scale.

    python benchmarks/bench_learning.py --task ss --models small large --clips 20000

Trains the given vanilla models of the active profile (the demo's sizes by default) with the
authors' recipe on a larger synthetic training set than the demo uses, validating after every
``--epoch-clips`` training clips, and prints validation SI-SNRi against training clips seen and
wall time. The models train at the same time, one process and ``--threads`` threads each.
Nothing in the repository is touched: everything is written under ``--workdir`` (a scratch copy
of the layout with data/corpus linked in; run `dvc repro get_data` first).

This answers "how long until the large model pulls ahead of the small one?", which decides what
a demo can show on a given machine (see README, "The demo study").
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from kboost.tasks import NAMES as TASK_NAMES

REPO = Path(__file__).resolve().parents[1]


def _set(params: dict, dotted: str, value) -> None:
    node = params
    *parents, leaf = dotted.split(".")
    for key in parents:
        if key not in node:
            raise SystemExit(f"--set {dotted}: no parameter {key!r} in params.yaml")
        node = node[key]
    node[leaf] = value


def probe_params(args) -> dict:
    """params.yaml with the probe's data size, epoch length and overrides applied."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    profile = params["profiles"][params["profile"]]
    profile["data"]["mixtures"]["train"] = args.train_mixtures
    epochs = max(1, round(args.clips / args.epoch_clips))
    profile["train"].update(train_mixtures=args.epoch_clips, threads=args.threads, processes=1,
                            batch_size=args.batch_size, boosted_init="scratch")  # vanilla models only
    profile["train"]["epochs"].update({model: epochs for model in args.models})
    for item in args.set:
        key, _, value = item.partition("=")
        _set(params, key, yaml.safe_load(value))
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="ss", choices=TASK_NAMES)
    parser.add_argument("--models", nargs="+", default=["small", "large"], choices=["small", "medium", "large"])
    parser.add_argument("--clips", type=int, default=20000, help="training clips per model (default: %(default)s)")
    parser.add_argument("--epoch-clips", type=int, default=500,
                        help="training clips between validations (default: %(default)s)")
    parser.add_argument("--train-mixtures", type=int, default=2000,
                        help="training mixtures to synthesise (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="threads per model (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1, help="clips per optimiser step (default: %(default)s)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=YAML",
                        help="further params.yaml overrides, e.g. profiles.demo.train.crop_seconds=null")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "kboost-learning"),
                        help="scratch directory (default: %(default)s)")
    args = parser.parse_args()

    corpus = REPO / "data" / "corpus"
    if not (corpus / "speech").is_dir():
        raise SystemExit(f"{corpus}: no corpus; run `dvc repro get_data` first")
    work = Path(args.workdir)
    (work / "data").mkdir(parents=True, exist_ok=True)
    link = work / "data" / "corpus"
    if not link.exists():
        link.symlink_to(corpus)
    params = probe_params(args)
    params_path = work / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))

    mixtures = work / "data" / "mixtures" / args.task
    if not (mixtures / "train" / "manifest.csv").is_file():
        print(f"synthesising {args.train_mixtures} {args.task} training mixtures into {mixtures}", flush=True)
        subprocess.run([sys.executable, str(REPO / "pipeline" / "synthesize.py"), "--task", args.task,
                        "--out", str(mixtures.relative_to(work)), "--params", "params.yaml"],
                       cwd=work, env=env, check=True)

    started = time.perf_counter()
    jobs = {}
    for model in args.models:
        run = work / "runs" / args.task / model
        log = (work / f"{args.task}-{model}.log").open("w")
        jobs[model] = subprocess.Popen(
            [sys.executable, str(REPO / "pipeline" / "train.py"), "--task", args.task, "--model", model,
             "--out", str(run / "checkpoints"), "--live", str(run / "live"), "--params", "params.yaml",
             "--no-progress"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    failed = [model for model, job in jobs.items() if job.wait() != 0]
    if failed:
        raise SystemExit(f"training failed for {', '.join(failed)}; see {work}/{args.task}-<model>.log")
    wall = time.perf_counter() - started

    curves = {}
    for model in args.models:
        path = work / "runs" / args.task / model / "live" / "plots" / "metrics" / "val_si_snri.tsv"
        with path.open() as handle:
            curves[model] = [float(row["val_si_snri"]) for row in csv.DictReader(handle, delimiter="\t")]
    print(f"\n{args.task}: validation SI-SNRi (dB) after each {args.epoch_clips} training clips "
          f"(batch {args.batch_size}, "
          f"{args.train_mixtures} training mixtures, {args.threads} thread(s) per model, {wall / 60:.1f} min in all)")
    print("clips  " + "  ".join(f"{model:>7}" for model in args.models))
    for epoch in range(max(len(curve) for curve in curves.values())):
        cells = [f"{curves[m][epoch]:7.2f}" if epoch < len(curves[m]) else " " * 7 for m in args.models]
        print(f"{(epoch + 1) * args.epoch_clips:5d}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
