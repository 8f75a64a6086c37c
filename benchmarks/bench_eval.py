"""Benchmark evaluation throughput on a task's real test split (run `dvc repro synthesize@<task>` first).

    python benchmarks/bench_eval.py --task ss

Prints utterances per second per core of (1) scoring (SI-SDR, PESQ and STOI per ear and source)
with 1 and 2 worker processes, and (2) inference: a vanilla small model on whole clips and a
boosted pair (small + large of the active profile) streamed chunk by chunk, all clips as one batch.
"""
from __future__ import annotations

import argparse
import time

import torch

from kboost.dataset import MixtureDataset
from kboost.evaluation import estimate, score
from kboost.experiment import model_sizes
from kboost.models import BoostedPair, TFGridNet
from kboost.params import load_params
from kboost.tasks import NAMES as TASK_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="ss", choices=TASK_NAMES)
    parser.add_argument("--utterances", type=int, default=16, help="test utterances to use (default: %(default)s)")
    parser.add_argument("--delay", type=int, default=6)
    args = parser.parse_args()

    data = MixtureDataset(f"data/mixtures/{args.task}", "test", limit=args.utterances)
    count = len(data)
    seconds = data[0]["mixture"].shape[-1] / data.sample_rate
    print(f"{args.task}: {count} test utterances of {seconds:g} s")
    for workers in (1, 2):
        started = time.perf_counter()
        score(data, None, workers=workers, progress=False)
        elapsed = time.perf_counter() - started
        print(f"scoring with {workers} worker(s): {count / elapsed:.2f} utt/s, {count / elapsed / workers:.2f} utt/s/core")

    torch.set_num_threads(1)
    sizes = model_sizes(load_params())
    torch.manual_seed(0)
    models = {"vanilla small (whole clips)": TFGridNet(args.task, sizes["small"]),
              f"boosted pair, streamed (delay {args.delay})":
                  BoostedPair(TFGridNet(args.task, sizes["small"]), TFGridNet(args.task, sizes["large"]), args.delay)}
    for name, model in models.items():
        started = time.perf_counter()
        estimate(model, data, batch_size=count, progress=False)
        elapsed = time.perf_counter() - started
        print(f"inference, {name}, 1 thread: {count / elapsed:.2f} utt/s/core "
              f"(real-time factor {elapsed / (count * seconds):.3f})")


if __name__ == "__main__":
    main()
