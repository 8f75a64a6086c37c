"""Training throughput with torch's LSTM kernels and with kboost's (train.cpu_lstm: torch | fast).

    python benchmarks/bench_training.py                       # demo sizes, 0.5 s crops, batch 2 and 8
    python benchmarks/bench_training.py --scale paper --batches 8 --seconds 4 --steps 1

For each model: clips per second of a full training step (PIT SI-SDR loss for SS, backward,
gradient clipping, Adam), 2 threads, and the share of the step spent in LSTMs (forward and
backward, from torch.profiler: torch's mkldnn RNN ops, or the FastLSTM autograd function), for
both LSTM paths, interleaved step by step so that a busy machine slows both alike.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from kboost.models import HOP, PAPER_SIZES, BoostedPair, GridNetSize, TFGridNet
from kboost.models.fast_lstm import set_enabled
from kboost.objectives import negative_si_sdr

REPO = Path(__file__).resolve().parents[1]


def _sizes(scale: str) -> dict[str, GridNetSize]:
    if scale == "paper":
        return dict(PAPER_SIZES)
    models = yaml.safe_load((REPO / "params.yaml").read_text())["profiles"][scale]["models"]
    return {role: GridNetSize.from_dict(cfg) for role, cfg in models.items()}


def _model(task: str, sizes: dict, name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "boosted":
        return BoostedPair(TFGridNet(task, sizes["small"]), TFGridNet(task, sizes["large"]), delay=6)
    return TFGridNet(task, sizes[name])


def _lstm_seconds(prof) -> float:
    total = 0.0
    for event in prof.key_averages():
        name = event.key.lower()
        if "rnn" in name or "fastlstm" in name or "lstm" in name:
            total += event.self_cpu_time_total
    return total / 1e6


def measure(task: str, model: torch.nn.Module, batch: int, samples: int, steps: int) -> dict:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    audio = 0.1 * torch.randn(batch, 2, samples)
    targets = 0.1 * torch.randn(batch, 2 if task == "ss" else 1, 2, samples)
    embedding = torch.randn(batch, 256) if task == "tse" else None

    def step():
        loss = negative_si_sdr(model(audio, embedding), targets, permutation_invariant=task == "ss")
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()

    times = {"torch": [], "fast": []}
    share = {}
    for path in ("torch", "fast"):  # warm-up: one-off allocations, numba's cache
        set_enabled(path == "fast")
        step()
    for _ in range(steps):
        for path in ("torch", "fast"):
            set_enabled(path == "fast")
            started = time.perf_counter()
            step()
            times[path].append(time.perf_counter() - started)
    for path in ("torch", "fast"):
        set_enabled(path == "fast")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            step()
            wall = time.perf_counter() - started
        share[path] = _lstm_seconds(prof) / wall
    set_enabled(None)
    return {path: (statistics.median(times[path]), share[path]) for path in times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="ss", choices=["se", "ss", "tse"])
    parser.add_argument("--scale", default="demo", help="demo | smoke | paper (default: %(default)s)")
    parser.add_argument("--models", default="small,medium,large,boosted")
    parser.add_argument("--batches", default="2,8")
    parser.add_argument("--seconds", type=float, default=0.5, help="clip length (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = _sizes(args.scale)
    samples = max(1, round(args.seconds * 16000 / HOP)) * HOP
    print(f"{args.task}, {args.scale} sizes, {args.seconds:g} s clips, {args.threads} threads, median of {args.steps}")
    print("model    batch | torch: s/step clips/s LSTM% | fast: s/step clips/s LSTM% | speed-up")
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            result = measure(args.task, _model(args.task, sizes, name), batch, samples, args.steps)
            (t, t_share), (f, f_share) = result["torch"], result["fast"]
            print(f"{name:8} {batch:5} | {t:8.3f} {batch / t:8.1f} {100 * t_share:4.0f}% | "
                  f"{f:7.3f} {batch / f:8.1f} {100 * f_share:4.0f}% | {t / f:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
