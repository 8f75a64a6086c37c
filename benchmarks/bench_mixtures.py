"""Benchmark mixture synthesis: mixtures per second per core, and the paper-scale projection.

Renders N mixtures of each task in one process (one core) from an existing corpus
(default: data/corpus, made by `dvc repro get_data`), then times TSE enrolment d-vectors.

    python benchmarks/bench_mixtures.py --count 100 --seconds 5
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from kboost.logs import setup_logging
from kboost.mixtures import Corpus, _embed_file, plan_split, render_mixture
from kboost.tasks import TASKS
from kboost.params import active_profile, load_params

PAPER_MIXTURES = 3 * (100_000 + 5_000 + 5_000)  # three tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="data/corpus", help="corpus directory (default: %(default)s)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--count", type=int, default=60, help="mixtures per task (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length (default: %(default)s, the paper's)")
    parser.add_argument("--cores", type=int, default=16, help="cores assumed for the paper-scale projection")
    args = parser.parse_args()
    setup_logging()
    params = load_params(args.params)
    pdata = active_profile(params)["data"]
    corpus = Corpus.load(args.corpus)
    total_mix, total_time = 0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for task in params["tasks"]:
            plan = plan_split(corpus, task, "train", args.count, args.seconds, params["data"],
                              pdata["response_sets"], params["seed"])
            split_dir = Path(tmp) / task
            for stem in TASKS[task].stems:
                (split_dir / stem).mkdir(parents=True)
            rows = plan.to_dict("records")
            started = time.perf_counter()
            for row in rows:
                render_mixture((row, corpus.roots, str(split_dir), params["data"]["peak_limit"]))
            elapsed = time.perf_counter() - started
            total_mix += len(rows)
            total_time += elapsed
            print(f"{task}: {len(rows)} mixtures of {args.seconds:g} s in {elapsed:.2f} s "
                  f"-> {len(rows) / elapsed:.1f} mixtures/s/core")
            if TASKS[task].needs_embedding:
                files = sorted(set(plan["enrol_file"]))[:40]
                _embed_file((str(Path(corpus.roots["speech"]) / files[0]), 16000))  # load the encoder
                started = time.perf_counter()
                for f in files:
                    _embed_file((str(Path(corpus.roots["speech"]) / f), 16000))
                per = (time.perf_counter() - started) / len(files)
                print(f"tse: d-vector {per * 1000:.1f} ms per enrolment utterance (one per distinct utterance)")
    rate = total_mix / total_time
    hours = PAPER_MIXTURES / (rate * args.cores) / 3600
    print(f"all tasks: {rate:.1f} mixtures/s/core (target >= 4 for 5 s clips)")
    print(f"paper scale: {PAPER_MIXTURES} mixtures on {args.cores} cores -> {hours:.2f} h of rendering")


if __name__ == "__main__":
    main()
