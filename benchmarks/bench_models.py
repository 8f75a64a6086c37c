"""Benchmark the models: streaming latency per 8 ms chunk and training-step time and memory.

    python benchmarks/bench_models.py                 # paper sizes, SS
    python benchmarks/bench_models.py --skip-training

Streaming runs with one thread and batch 1 (a device), with the PyTorch modules' own step
[torch] and with the compiled engine of kboost.streaming [compiled]; training with two threads, batch 8 of
4 s clips (the reference figures of issue #3), in float32 and with bfloat16 autocast; each
training run is a fresh process whose peak RSS is reported.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from kboost.models import HOP, PAPER_SIZES, BoostedPair, TFGridNet
from kboost.models.gridnet import EMBEDDING_DIM
from kboost.parallel import limit_threads, thread_report
from kboost.streamer import ENGINES, make_streamer
from kboost.tasks import NAMES as TASK_NAMES, get_task


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _per_chunk_ms(step, audio: torch.Tensor, chunks: int, warm: int = 60) -> float:
    """Mean milliseconds of ``step(chunk)`` over ``chunks`` chunks, after ``warm`` chunks that
    fill the attention windows and caches as in steady state."""
    with torch.inference_mode():
        for k in range(warm):
            step(audio[..., k * HOP:(k + 1) * HOP])
        started = time.perf_counter()
        for k in range(warm, warm + chunks):
            step(audio[..., k * HOP:(k + 1) * HOP])
    return (time.perf_counter() - started) / chunks * 1e3


def streaming(task: str, chunks: int, delay: int) -> None:
    """Per-chunk latency with one thread, batch 1 (a device), for both engines: the PyTorch
    modules' ``step`` and the compiled engine (kboost.streaming)."""
    limit_threads(1)  # as `kboost stream --threads 1`: every library, also those loaded later
    torch.manual_seed(0)
    embedding = torch.randn(1, EMBEDDING_DIM) if get_task(task).needs_embedding else None
    small = TFGridNet(task, PAPER_SIZES["small"]).eval()
    large = TFGridNet(task, PAPER_SIZES["large"]).eval()
    pair = BoostedPair(small, large, delay).eval()  # the vanilla models run on their own state below
    audio = torch.randn(1, 2, (chunks + 60) * HOP)

    inputs = {"torch": audio, "compiled": audio[0].numpy()}
    results = {}
    for engine in ENGINES:
        for name, model in (("small", small), ("large", large)):
            streamer = make_streamer(model, embedding, engine)
            limit_threads(1)  # compiling loaded SciPy's BLAS
            state = streamer.initial_state()
            results[(name, engine)] = _per_chunk_ms(lambda c, s=streamer, st=state: s.step(c, st),
                                                    inputs[engine], chunks)
        streamer = make_streamer(pair, embedding, engine)
        limit_threads(1)
        state = streamer.initial_state()
        hint = streamer.remote_step(inputs[engine][..., :HOP], streamer.initial_state())  # a hint of the right shape
        results[("boosted small (device side, hint given)", engine)] = _per_chunk_ms(
            lambda c: streamer.device_step(c, hint, state), inputs[engine], chunks)
    for (name, kind), ms in results.items():
        print(f"streaming {task} {name} [{kind}]: {ms:.2f} ms per 8 ms chunk "
              f"(real-time factor {ms / 8:.3f}), 1 thread")
    print(f"threads: {thread_report()}")


def training_step(task: str, batch: int, seconds: float, size: str, steps: int, precision: str) -> tuple[float, float]:
    """Mean seconds per optimiser step and this process's peak RSS (GiB)."""
    torch.set_num_threads(2)
    samples = int(seconds * 16000) // HOP * HOP
    torch.manual_seed(0)
    model = TFGridNet(task, PAPER_SIZES[size])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    audio = torch.randn(batch, 2, samples)
    embedding = torch.randn(batch, EMBEDDING_DIM) if get_task(task).needs_embedding else None
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(audio, embedding).float().pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        times.append(time.perf_counter() - started)
    return sum(times[1:]) / steps, _peak_rss_gib()  # the first step includes one-off allocations


def training(task: str, batch: int, seconds: float, sizes: list[str], steps: int, precisions: list[str]) -> None:
    """Each (size, precision) in a fresh process, so peak memory is that model's own."""
    for size in sizes:
        for precision in precisions:
            command = [sys.executable, __file__, "--one-training-step", size, precision, "--task", task,
                       "--batch", str(batch), "--seconds", str(seconds), "--steps", str(steps)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            step, peak = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"training {task} {size} [{precision}]: {step:.2f} s per step of {batch} x {seconds:g} s clips, "
                  f"2 threads ({batch / step:.2f} clips/s), peak RSS {peak:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="ss", choices=TASK_NAMES)
    parser.add_argument("--chunks", type=int, default=200, help="timed streaming chunks (default: %(default)s)")
    parser.add_argument("--delay", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per model (default: %(default)s)")
    parser.add_argument("--sizes", default="small,medium,large", help="models to train (default: %(default)s)")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="training precisions: fp32 and/or bf16 autocast (default: %(default)s)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-streaming", action="store_true")
    parser.add_argument("--one-training-step", nargs=2, metavar=("SIZE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_training_step:
        size, precision = args.one_training_step
        print(json.dumps(training_step(args.task, args.batch, args.seconds, size, args.steps, precision)))
        return
    if not args.skip_streaming:
        streaming(args.task, args.chunks, args.delay)
    if not args.skip_training:
        training(args.task, args.batch, args.seconds, args.sizes.split(","), args.steps, args.precisions.split(","))


if __name__ == "__main__":
    main()
