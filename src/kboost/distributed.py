"""Processes and devices of a training run: one process, or DistributedDataParallel under torchrun.

A stage asks for N processes through params (``profiles.<profile>.train.processes``);
:func:`exec_under_torchrun` then replaces the stage process by ``torchrun --standalone
--nproc_per_node N`` running the same command, so `dvc repro` needs no edit of dvc.yaml for
several GPUs or for using every core of a CPU. Workers die with their launcher (Linux), so a
stage killed with kill -9 leaves no orphan still writing checkpoints.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def exec_under_torchrun(processes: int, script: str, arguments: list[str]) -> None:
    """Become ``torchrun`` running ``script arguments`` in ``processes`` workers, unless one
    process is asked for or this already is a torchrun worker (then return and go on)."""
    if processes <= 1 or "WORLD_SIZE" in os.environ:
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(processes), script, *arguments]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its launcher dies (prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def runtime() -> Runtime:
    """Device and process group: CUDA when available, DDP under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        _die_with_parent()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank = dist.get_rank()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", rank))
            torch.cuda.set_device(local)
            return Runtime(torch.device("cuda", local), rank, world)
        return Runtime(torch.device("cpu"), rank, world)
    return Runtime(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def all_sum(values: list[float], rt: Runtime) -> list[float]:
    """Sum ``values`` over the processes (identity for one process)."""
    if rt.world == 1:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(rt: Runtime) -> None:
    if rt.world > 1:
        import torch.distributed as dist

        dist.barrier()
