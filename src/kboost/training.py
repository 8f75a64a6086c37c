"""Training of vanilla TF-GridNets and jointly trained boosted pairs (the authors' recipe).

Adam, ReduceLROnPlateau on validation SI-SNRi (mode max), gradient clipping, negative SI-SDR
loss (permutation-invariant for SS). One loop serves both model kinds: a boosted pair's forward
returns the small model's output, so its loss is the small model's and the large model is
trained through it.

Resumable and deterministic: every epoch's shuffling and crops are a pure function of
(seed, epoch) (:class:`kboost.dataset.EpochView`), and ``last.pt`` holds the weights, the
optimiser and scheduler state and the history after each epoch. A run killed at any point
resumes from the last finished epoch and ends with the same weights and metrics as an
uninterrupted run (on the CPU). Checkpoints and when one is reused: :mod:`kboost.run_store`;
the DVCLive log: :mod:`kboost.live_log`.

Distributed: started under ``torchrun`` (WORLD_SIZE > 1) it runs DistributedDataParallel
(NCCL on GPUs, Gloo on CPUs); ``batch_size`` is the global batch, split across processes;
only rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import zlib
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .dataset import EpochView, collate
from .distributed import all_sum, barrier, runtime
from .errors import KboostError
from .live_log import LiveLog
from .memory import retain_freed_memory
from .models.frontend import HOP, SAMPLE_RATE
from .objectives import negative_si_sdr, pit_si_sdr, si_sdr
from .run_store import RunStore
from .runs import best_epoch
from .tasks import get_task

log = logging.getLogger(__name__)


class TrainingError(KboostError, RuntimeError):
    """Training cannot go on (non-finite loss or gradients, bad settings)."""


@dataclass(frozen=True)
class TrainSettings:
    """What a training run needs besides the model and the data."""

    epochs: int
    batch_size: int = 8
    lr: float = 1e-3
    lr_factor: float = 0.5
    lr_patience: int = 4
    min_lr: float = 1e-6
    clip_norm: float = 1.0
    crop_seconds: float | None = None  # random training crops; None = whole clips
    per_epoch: int | None = None  # training mixtures drawn per epoch; None = all
    seed: int = 42
    threads: int = 0  # CPU threads (0 = torch's default)
    loader_workers: int = 0
    mixed_precision: bool = False  # CUDA only: bfloat16 autocast

    @property
    def crop_samples(self) -> int | None:
        if self.crop_seconds is None:
            return None
        return max(1, round(self.crop_seconds * SAMPLE_RATE / HOP)) * HOP


# ------------------------------------------------------------------------------------ data
def trim_to_chunks(batch: dict) -> dict:
    """Cut clips to a whole number of 8 ms chunks (the models' contract)."""
    length = batch["mixture"].shape[-1] // HOP * HOP
    if length == 0:
        raise TrainingError(f"clips of {batch['mixture'].shape[-1]} samples are shorter than one 8 ms chunk")
    return dict(batch, mixture=batch["mixture"][..., :length], targets=batch["targets"][..., :length])


def clip_delays(ids, seed: int, epoch: int, delay_range: tuple[int, int]) -> torch.Tensor:
    """A variable-delay pair's hint delay for each clip of a batch: drawn uniformly from
    ``delay_range`` (inclusive) as a pure function of (seed, epoch, mixture id), so a resumed or
    distributed run draws the same ones."""
    low, high = delay_range
    draws = [zlib.crc32(f"{seed}:{epoch}:{mixture_id}".encode()) % (high - low + 1) + low for mixture_id in ids]
    return torch.tensor(draws, dtype=torch.long)


def _fault_injection(steps: int) -> None:
    """Tests set KBOOST_KILL_AFTER_STEPS=N to SIGKILL this process after N optimiser steps,
    the way an out-of-memory killer or a pulled plug would end a run mid-epoch."""
    limit = os.environ.get("KBOOST_KILL_AFTER_STEPS")
    if limit is not None and steps >= int(limit):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------- trainer
class Trainer:
    """Train ``model`` (a TFGridNet or a BoostedPair) on ``train_set``, validating on ``val_set``.

    ``out_dir`` receives best.pt and last.pt (:class:`~kboost.run_store.RunStore`); ``live_dir``
    the DVCLive metrics and plots (:class:`~kboost.live_log.LiveLog`; None: no log). ``meta``
    (JSON-able, e.g. resolved params) is stored in both checkpoints.
    """

    def __init__(self, model: nn.Module, task: str, train_set: Dataset, val_set: Dataset,
                 settings: TrainSettings, out_dir: str | os.PathLike, live_dir: str | os.PathLike | None,
                 meta: dict, progress: bool = True):
        self.task, self.settings, self.progress = task, settings, progress
        self.train_set, self.val_set = train_set, val_set
        self.rt = runtime()
        if settings.batch_size % self.rt.world:
            raise TrainingError(f"batch_size {settings.batch_size} is not divisible by the "
                                f"{self.rt.world} processes of this torchrun")
        if self.rt.device.type == "cpu":
            retain_freed_memory()  # the same large tensors every step: no page faults each time
            if settings.threads:
                torch.set_num_threads(settings.threads)
        self.model = model.to(self.rt.device)
        self.store = RunStore(out_dir, meta, asdict(settings), self.rt)
        self.live = LiveLog(live_dir)
        self.steps_taken = 0
        # fused: one kernel for all parameters instead of ~10 small ops each (the small model's
        # optimiser step takes half the time on the CPU; same update up to float32 rounding)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=settings.lr, fused=True)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimiser, mode="max", factor=settings.lr_factor, patience=settings.lr_patience,
            min_lr=settings.min_lr)
        self.history: list[dict] = []
        self.best = -math.inf
        self.permutation_invariant = get_task(task).permutation_invariant
        self.trained = self.model
        if self.rt.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            self.trained = DistributedDataParallel(self.model, device_ids=ids)

    # ------------------------------------------------------------------------ checkpoints
    def resume(self) -> int:
        """Load ``last.pt`` if it belongs to this run; return the number of finished epochs."""
        self.history = self.store.resume(self.model, self.optimiser, self.scheduler, self.settings.epochs)
        self.best = max((row["val_si_snri"] for row in self.history), default=-math.inf)
        return len(self.history)

    # ----------------------------------------------------------------------------- epochs
    def _autocast(self):
        if self.settings.mixed_precision and self.rt.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(self, model: nn.Module, batch: dict, epoch: int) -> torch.Tensor:
        mixture = batch["mixture"].to(self.rt.device, non_blocking=True)
        embedding = batch.get("embedding")
        if embedding is not None:
            embedding = embedding.to(self.rt.device, non_blocking=True)
        delay_range = getattr(self.model, "delay_range", None)
        with self._autocast():
            if delay_range is None:
                return model(mixture, embedding).float()
            ages = clip_delays(batch["id"], self.settings.seed, epoch, delay_range).to(self.rt.device)
            return model(mixture, embedding, ages=ages).float()

    def _loader(self, dataset: Dataset, batch: int) -> DataLoader:
        """Batches in the dataset's order (EpochView already shuffled and sharded it)."""
        workers = self.settings.loader_workers
        return DataLoader(dataset, batch_size=batch, shuffle=False, collate_fn=collate, num_workers=workers,
                          pin_memory=self.rt.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=4 if workers else None)

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training set; returns (mean loss, clips per second)."""
        s = self.settings
        view = EpochView(self.train_set, s.seed, epoch, s.crop_samples, self.rt.rank, self.rt.world, s.per_epoch)
        self.model.train()
        total, count, started = 0.0, 0, time.perf_counter()
        bar = tqdm(self._loader(view, s.batch_size // self.rt.world), desc=f"epoch {epoch + 1}/{s.epochs}",
                   unit="batch", dynamic_ncols=True, mininterval=2.0, disable=not (self.progress and self.rt.main))
        for step, batch in enumerate(bar):
            batch = trim_to_chunks(batch)
            targets = batch["targets"].to(self.rt.device, non_blocking=True)
            loss = negative_si_sdr(self._forward(self.trained, batch, epoch), targets, self.permutation_invariant)
            # Every process must stop at the same step, or the others would wait forever in the
            # next gradient all-reduce.
            finite = bool(torch.isfinite(loss))
            if all_sum([float(not finite)], self.rt)[0]:
                where = "in another process's batch" if finite else f"({loss.item()}) in batch mixtures {batch['id']}"
                raise TrainingError(f"non-finite loss at epoch {epoch + 1}, step {step + 1} {where}; "
                                    f"no checkpoint was written for this epoch")
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.clip_norm)
            if not torch.isfinite(norm):
                raise TrainingError(f"non-finite gradient norm at epoch {epoch + 1}, step {step + 1}, "
                                    f"batch mixtures {batch['id']}; no checkpoint was written for this epoch")
            self.optimiser.step()
            self.steps_taken += 1
            _fault_injection(self.steps_taken)
            total += loss.item() * len(batch["id"])
            count += len(batch["id"])
            bar.set_postfix(loss=f"{total / count:.2f}", clips_per_s=f"{count / (time.perf_counter() - started):.1f}",
                            refresh=False)  # the bar redraws at its own pace (mininterval)
        total, count = all_sum([total, float(count)], self.rt)
        seconds = time.perf_counter() - started
        return total / max(count, 1), count / seconds

    @torch.no_grad()
    def validate(self) -> float:
        """Mean SI-SNRi (dB) over the validation set, whole clips, eval mode."""
        self.model.eval()
        view = EpochView(self.val_set, 0, 0, None, self.rt.rank, self.rt.world)
        view.order = torch.arange(len(self.val_set))  # fixed order, whole clips
        total, count = 0.0, 0
        for batch in self._loader(view, self.settings.batch_size):
            batch = trim_to_chunks(batch)
            targets = batch["targets"].to(self.rt.device)
            estimate = self._forward(self.model, batch, epoch=-1)  # -1: the same delays every epoch
            mixture = batch["mixture"].to(self.rt.device).unsqueeze(1).expand_as(targets)
            gain = pit_si_sdr(estimate, targets) - si_sdr(mixture, targets)  # [B, S, 2]
            total += gain.mean(dim=(1, 2)).sum().item()
            count += len(batch["id"])
        total, count = all_sum([total, float(count)], self.rt)
        return total / max(count, 1)

    # ------------------------------------------------------------------------------- fit
    def fit(self) -> dict:
        """Train to ``settings.epochs`` (resuming if possible); return the final summary."""
        s = self.settings
        done = self.resume()
        if self.rt.main:
            self.store.create()
            self.live.write(self.history)
        for epoch in range(done, s.epochs):
            started = time.perf_counter()
            loss, throughput = self.train_epoch(epoch)
            val = self.validate()
            self.scheduler.step(val)
            row = {"epoch": epoch + 1, "train_loss": loss, "val_si_snri": val,
                   "lr": self.optimiser.param_groups[0]["lr"], "clips_per_second": throughput,
                   "seconds": time.perf_counter() - started}
            self.history.append(row)
            if self.rt.main:
                if val > self.best:
                    self.best = val
                    self.store.save_best(self.model, self.history)
                self.store.save_last(self.model, self.history, self.optimiser, self.scheduler)
                self.live.write(self.history)
                log.info("epoch %d/%d: loss %.3f, val SI-SNRi %.2f dB, lr %.2g, %.1f clips/s, %.0f s",
                         epoch + 1, s.epochs, loss, val, row["lr"], throughput, row["seconds"])
            barrier(self.rt)
        if not self.history:
            raise TrainingError("no epoch was run (epochs must be >= 1)")
        best_row = best_epoch(self.history)
        return {"epochs": len(self.history), "best_epoch": best_row["epoch"],
                "best_val_si_snri": best_row["val_si_snri"], "final_val_si_snri": self.history[-1]["val_si_snri"],
                "final_train_loss": self.history[-1]["train_loss"],
                # Timings of the epochs this process ran or resumed past (they vary run to run).
                "train_seconds": sum(row["seconds"] for row in self.history),
                "clips_per_second": sum(row["clips_per_second"] for row in self.history) / len(self.history)}
