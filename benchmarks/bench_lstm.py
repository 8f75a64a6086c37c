"""Benchmark the CPU LSTM of kboost.models.fast_lstm against torch.nn.LSTM (issue 14).

    python benchmarks/bench_lstm.py            # training-step shapes of every profile, 2 threads
    python benchmarks/bench_lstm.py --quick    # fewer shapes and repeats
    python benchmarks/bench_lstm.py --threads 1 --stat min

Shapes are those of one GridNet block in a training step: the intra-frame BiLSTM runs over the
97 frequency bins of every frame (N = batch * frames sequences, L = 97), the inter-frame LSTM
over the frames of every frequency bin (N = batch * 97, L = frames). 0.5 s crops are 63 frames;
the paper's batch of 8 clips of 4 s is 500 frames. Figures: milliseconds of forward +
backward (the sum of the output as the loss; input and all weights require gradients), and of
the forward alone under no_grad (inference). The runs of torch and of the fast path alternate,
so that both see the same machine load; median (or min) over the repeats.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from kboost.models.fast_lstm import FastLSTM

FREQS = 97
SIZES = [(16, 16), (26, 18), (32, 32), (64, 64)]  # (D, H): small, medium, large (demo), large (paper)


def shapes(quick: bool):
    """(label, N, L, bidirectional, D, H)."""
    out = []
    frames = 63  # 0.5 s crops
    for batch in ((2,) if quick else (2, 8)):
        for d, h in SIZES:
            out.append((f"intra b{batch} 0.5s", batch * frames, FREQS, True, d, h))
            out.append((f"inter b{batch} 0.5s", batch * FREQS, frames, False, d, h))
    for d, h in ([(16, 16), (64, 64)] if quick else SIZES):
        out.append(("intra b8 4s (paper)", 8 * 500, FREQS, True, d, h))
        out.append(("inter b8 4s (paper)", 8 * FREQS, 500, False, d, h))
    return out


def bench(n, steps, bidirectional, d, h, repeats, stat):
    """[torch f+b, fast f+b, torch inference, fast inference] in milliseconds."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(d, h, batch_first=True, bidirectional=bidirectional)
    fast = FastLSTM(d, h, batch_first=True, bidirectional=bidirectional)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(n, steps, d, requires_grad=True)

    def train(module):
        def run():
            y, _ = module(x)
            y.sum().backward()
        return run

    def infer(module):
        def run():
            with torch.no_grad():
                module(x)
        return run

    variants = [train(ref), train(fast), infer(ref), infer(fast)]
    for run in variants:
        run()  # warm-up (and numba's compilation or cache load)
    times = [[] for _ in variants]
    for _ in range(repeats):
        for run, record in zip(variants, times):
            start = time.perf_counter()
            run()
            record.append(time.perf_counter() - start)
    pick = statistics.median if stat == "median" else min
    return [pick(t) * 1e3 for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (--quick: 3); a third for the paper shapes")
    parser.add_argument("--stat", choices=["median", "min"], default="median")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.stat} of {repeats} "
          f"(torch and fast interleaved)")
    header = (f"{'shape':<20} {'N':>5} {'L':>4} {'D':>3} {'H':>3} | {'torch f+b':>10} {'fast f+b':>9} "
              f"{'x':>5} | {'torch fwd':>9} {'fast fwd':>9} {'x':>5}")
    print(header)
    print("-" * len(header))
    for label, n, steps, bidirectional, d, h in shapes(args.quick):
        reps = max(1, repeats // 3) if n * steps > 100_000 and not args.repeats else repeats
        t_ref, t_fast, i_ref, i_fast = bench(n, steps, bidirectional, d, h, reps, args.stat)
        print(f"{label:<20} {n:>5} {steps:>4} {d:>3} {h:>3} | {t_ref:>8.1f}ms {t_fast:>7.1f}ms "
              f"{t_ref / t_fast:>5.1f} | {i_ref:>7.1f}ms {i_fast:>7.1f}ms {i_ref / i_fast:>5.1f}", flush=True)


if __name__ == "__main__":
    main()
