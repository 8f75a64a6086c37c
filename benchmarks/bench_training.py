"""Training throughput with torch's LSTM kernels and with kboost's (train.cpu_lstm: torch | fast).

    python benchmarks/bench_training.py                       # demo sizes, 0.5 s crops, batch 2 and 8
    python benchmarks/bench_training.py --scale paper --batches 8 --seconds 4 --steps 1
    python benchmarks/bench_training.py --scale paper --batches 8 --seconds 4 --steps 3 \
        --models small,medium --authors-repo ~/src/knowledge-boosting   # beside the authors' code

For each model: clips per second of a full training step (PIT SI-SDR loss for SS, backward,
gradient clipping, Adam), 2 threads, and the share of the step spent in LSTMs (forward and
backward, from torch.profiler: torch's mkldnn RNN ops, or the FastLSTM autograd function), for
both LSTM paths, interleaved step by step so that a busy machine slows both alike. The last
columns bound what faster LSTM kernels could still give: the LSTMs' MACs (forward and
backward, kboost.complexity's count) at this machine's matrix-product rate, the rest of the fast step as measured, and
the torch path's step over their sum.

--authors-repo DIR (a checkout of github.com/vysri/knowledge-boosting) adds, for SS small and
medium, the authors' own model (their Net, stock nn.LSTM) trained the same way, interleaved
with ours; espnet2 is not needed: when it is absent, the two names their files import from it
(AbsSeparator, get_layer) are provided here.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from kboost.models import HOP, PAPER_SIZES, BoostedPair, GridNetSize, TFGridNet
from kboost.complexity import MacCounter
from kboost.memory import retain_freed_memory
from kboost.models.fast_lstm import set_enabled
from kboost.objectives import negative_si_sdr
from kboost.models.gridnet import EMBEDDING_DIM
from kboost.tasks import NAMES as TASK_NAMES, get_task

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


def _authors_model(repo: Path, size: GridNetSize) -> torch.nn.Module:
    """The authors' SS baseline of this size (their code, imported from a checkout)."""
    import importlib
    import sys
    import types

    try:
        importlib.import_module("espnet2")
    except ImportError:  # only these two names are used by the baselines' files
        separator = types.ModuleType("espnet2.enh.separator.abs_separator")
        separator.AbsSeparator = torch.nn.Module
        layers = types.ModuleType("espnet2.torch_utils.get_layer_from_string")
        layers.get_layer = lambda name: {"prelu": torch.nn.PReLU, "relu": torch.nn.ReLU}[name.lower()]
        for name in ("espnet2", "espnet2.enh", "espnet2.enh.separator", "espnet2.torch_utils"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules[separator.__name__], sys.modules[layers.__name__] = separator, layers
    sys.path.insert(0, str(repo))
    net = importlib.import_module("src.models.tfgridnet_ssep_causal_torch_stft_layernorm.net")
    torch.manual_seed(0)
    model = net.Net(stft_chunk_size=HOP, stft_pad_size=HOP // 2, num_ch=2, D=size.emb_dim, B=size.blocks,
                    I=1, J=1, H=size.hidden, use_attn=False, lookahead=True, generate_embeddings=True)

    class Sources(torch.nn.Module):  # [B, 2, N] -> [B, 2 speakers, 2 ears, N], as ours
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, audio, embedding=None):
            out = self.net({"mixture": audio})
            return torch.stack([out["output1"], out["output2"]], dim=1)
    return Sources()


def _lstm_seconds(prof) -> float:
    total = 0.0
    for event in prof.key_averages():
        name = event.key.lower()
        if "rnn" in name or "fastlstm" in name or "lstm" in name:
            total += event.self_cpu_time_total
    return total / 1e6


def _step_function(task: str, model: torch.nn.Module, batch: int, samples: int):
    """One training step of `model` on fixed random clips (as training.py does it)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    facts = get_task(task)
    audio = 0.1 * torch.randn(batch, 2, samples)
    targets = 0.1 * torch.randn(batch, facts.sources, 2, samples)
    embedding = torch.randn(batch, EMBEDDING_DIM) if facts.needs_embedding else None

    def step():
        loss = negative_si_sdr(model(audio, embedding), targets, permutation_invariant=facts.permutation_invariant)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
    return step


def _interleaved_medians(steps_by_name: dict, steps: int) -> dict[str, float]:
    """Median seconds of each zero-argument step function, after one warm-up call each (one-off
    allocations, numba's cache), the functions taking turns so that a busy machine slows all alike."""
    times = {name: [] for name in steps_by_name}
    for fn in steps_by_name.values():
        fn()
    for _ in range(steps):
        for name, fn in steps_by_name.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def _on_path(step, fast: bool):
    """`step` with the LSTM path switched first (the switch is process-wide)."""
    def run():
        set_enabled(fast)
        step()
    return run


def measure_beside_authors(model: torch.nn.Module, authors: torch.nn.Module, batch: int, samples: int,
                           steps: int) -> tuple[float, float]:
    """Median seconds per SS training step: ours (fast LSTMs) and the authors', interleaved."""
    medians = _interleaved_medians({"ours": _on_path(_step_function("ss", model, batch, samples), True),
                                    "authors": _step_function("ss", authors, batch, samples)}, steps)
    set_enabled(None)
    return medians["ours"], medians["authors"]


def sgemm_macs_per_second() -> float:
    """The machine's float32 matrix-product rate (2048^3 torch.mm, best of 10): the ceiling the
    LSTM kernels are held against."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2048 ** 3 / best


def lstm_macs(task: str, model: torch.nn.Module, batch: int, samples: int) -> int:
    """Multiply-accumulates of the LSTMs in one training step: kboost.complexity's counter
    (ptflops' rule: 4H(D + H) weight MACs + 18H per step and direction) on one forward of the
    clips, x3 for forward and backward (the backward does the weight products twice: dh/dx and
    the weight gradients); block padding not counted (a lower bound)."""
    with MacCounter({"model": [model]}) as counter, torch.no_grad():
        model(0.1 * torch.randn(batch, 2, samples),
              torch.randn(batch, EMBEDDING_DIM) if get_task(task).needs_embedding else None)
    return 3 * counter.breakdown()["model"].get("lstm", 0)


def measure(task: str, model: torch.nn.Module, batch: int, samples: int, steps: int) -> dict:
    step = _step_function(task, model, batch, samples)
    paths = {path: _on_path(step, path == "fast") for path in ("torch", "fast")}
    medians = _interleaved_medians(paths, steps)
    share = {}
    for path, run in paths.items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            run()
            wall = time.perf_counter() - started
        share[path] = _lstm_seconds(prof) / wall
    set_enabled(None)
    return {path: (medians[path], share[path]) for path in paths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="ss", choices=TASK_NAMES)
    parser.add_argument("--scale", default="demo", help="demo | smoke | paper (default: %(default)s)")
    parser.add_argument("--models", default="small,medium,large,boosted")
    parser.add_argument("--batches", default="2,8")
    parser.add_argument("--seconds", type=float, default=0.5, help="clip length (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator as it is (training and evaluation call kboost.memory.retain_freed_memory)")
    parser.add_argument("--authors-repo", type=Path, help="checkout of the authors' code: compare SS small/medium")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.default_malloc:
        retain_freed_memory()  # as training does (the authors' model, in this process, gets it too)
    sizes = _sizes(args.scale)
    samples = max(1, round(args.seconds * 16000 / HOP)) * HOP
    print(f"{args.task}, {args.scale} sizes, {args.seconds:g} s clips, {args.threads} threads, median of {args.steps}")
    peak = sgemm_macs_per_second()
    print(f"matrix-product rate of this machine: {peak / 1e9:.1f} GMAC/s (float32 torch.mm 2048^3)")
    print("model    batch | torch: s/step clips/s LSTM% | fast: s/step clips/s LSTM% | speed-up "
          "| LSTM floor s, rest s, best possible speed-up")
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            model = _model(args.task, sizes, name)
            result = measure(args.task, model, batch, samples, args.steps)
            (t, t_share), (f, f_share) = result["torch"], result["fast"]
            # the LSTMs' MACs at the matrix-product rate plus the rest of the step as it
            # is now: what even a perfect LSTM kernel could not go below
            floor = lstm_macs(args.task, model, batch, samples) / peak
            rest = f * (1 - f_share)
            print(f"{name:8} {batch:5} | {t:8.3f} {batch / t:8.1f} {100 * t_share:4.0f}% | "
                  f"{f:7.3f} {batch / f:8.1f} {100 * f_share:4.0f}% | {t / f:5.2f}x | "
                  f"{floor:6.3f} {rest:6.3f} {t / (floor + rest):5.2f}x", flush=True)
    if args.authors_repo:
        print("beside the authors' code (SS): model batch | ours s/step | authors' s/step | ours ahead by")
        for name in [n for n in args.models.split(",") if n in ("small", "medium")]:
            for batch in (int(b) for b in args.batches.split(",")):
                ours, theirs = measure_beside_authors(_model("ss", sizes, name),
                                                      _authors_model(args.authors_repo, sizes[name]),
                                                      batch, samples, args.steps)
                print(f"{name:8} {batch:5} | {ours:8.3f} | {theirs:8.3f} | {theirs / ours:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
