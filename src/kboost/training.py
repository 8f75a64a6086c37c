"""Training of vanilla TF-GridNets and jointly trained boosted pairs (the authors' recipe).

Adam, ReduceLROnPlateau on validation SI-SNRi (mode max), gradient clipping, negative SI-SDR
loss (permutation-invariant for SS). One loop serves both model kinds: a boosted pair's forward
returns the small model's output, so its loss is the small model's and the large model is
trained through it.

Resumable and deterministic: every epoch's shuffling and crops are a pure function of
(seed, epoch), and ``last.pt`` holds the weights, the optimiser and scheduler state and the
history after each epoch. A run killed at any point resumes from the last finished epoch and
ends with the same weights and metrics as an uninterrupted run (on the CPU). A checkpoint is
reused only if it was written for the same model, data and settings (its fingerprint).

Distributed: started under ``torchrun`` (WORLD_SIZE > 1) it runs DistributedDataParallel
(NCCL on GPUs, Gloo on CPUs); ``batch_size`` is the global batch, split across processes;
only rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .dataset import collate
from .distributed import all_sum, barrier, runtime
from .errors import KboostError
from .memory import retain_freed_memory
from .models.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .models.frontend import HOP, SAMPLE_RATE
from .objectives import negative_si_sdr, pit_si_sdr, si_sdr
from .runs import best_epoch

log = logging.getLogger(__name__)

BEST, LAST = "best.pt", "last.pt"
_EPOCH_STREAM = 1_000_003  # spreads (seed, epoch) pairs over generator seeds


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
class EpochView(Dataset):
    """One epoch's order and crops of a MixtureDataset, drawn from (seed, epoch): the first
    ``per_epoch`` mixtures of a fresh permutation (all by default), optionally only this
    process's shard (``rank::world``)."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int, crop: int | None, rank: int = 0, world: int = 1,
                 per_epoch: int | None = None):
        generator = torch.Generator().manual_seed(seed + _EPOCH_STREAM * (epoch + 1))
        order = torch.randperm(len(dataset), generator=generator)
        self.starts = torch.randint(0, 2**31 - 1, (len(dataset),), generator=generator)[order]
        self.order, self.crop = order, crop
        count = len(dataset) if per_epoch is None else min(per_epoch, len(dataset))
        self.positions = list(range(rank, count, world))
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, position: int) -> dict:
        slot = self.positions[position]
        item = self.dataset[int(self.order[slot])]
        length = item["mixture"].shape[-1]
        if self.crop is not None and self.crop < length:
            start = int(self.starts[slot]) % (length - self.crop + 1)
            item = dict(item, mixture=item["mixture"][..., start:start + self.crop],
                        targets=item["targets"][..., start:start + self.crop])
        return item


def trim_to_chunks(batch: dict) -> dict:
    """Cut clips to a whole number of 8 ms chunks (the models' contract)."""
    length = batch["mixture"].shape[-1] // HOP * HOP
    if length == 0:
        raise TrainingError(f"clips of {batch['mixture'].shape[-1]} samples are shorter than one 8 ms chunk")
    return dict(batch, mixture=batch["mixture"][..., :length], targets=batch["targets"][..., :length])


def _fault_injection(steps: int) -> None:
    """Tests set KBOOST_KILL_AFTER_STEPS=N to SIGKILL this process after N optimiser steps,
    the way an out-of-memory killer or a pulled plug would end a run mid-epoch."""
    limit = os.environ.get("KBOOST_KILL_AFTER_STEPS")
    if limit is not None and steps >= int(limit):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- fingerprint
def code_digest() -> str:
    """Hash of the kboost package's source: a checkpoint written by other code is not resumed
    (DVC reruns a stage when its code changes, and the persisted last.pt must not survive that)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(description: dict) -> str:
    """A short hash of everything that determines a run (model, data, settings)."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- trainer
class Trainer:
    """Train ``model`` (a TFGridNet or a BoostedPair) on ``train_set``, validating on ``val_set``.

    ``out_dir`` receives best.pt and last.pt; ``live_dir`` the DVCLive metrics and plots.
    ``meta`` (JSON-able, e.g. resolved params) is stored in both checkpoints.
    """

    def __init__(self, model: nn.Module, task: str, train_set: Dataset, val_set: Dataset,
                 settings: TrainSettings, out_dir: str | os.PathLike, live_dir: str | os.PathLike | None,
                 meta: dict, progress: bool = True):
        self.task, self.settings, self.progress = task, settings, progress
        self.train_set, self.val_set = train_set, val_set
        self.out_dir = Path(out_dir)
        self.live_dir = Path(live_dir) if live_dir is not None else None
        self.rt = runtime()
        if settings.batch_size % self.rt.world:
            raise TrainingError(f"batch_size {settings.batch_size} is not divisible by the "
                                f"{self.rt.world} processes of this torchrun")
        if self.rt.device.type == "cpu":
            retain_freed_memory()  # the same large tensors every step: no page faults each time
            if settings.threads:
                torch.set_num_threads(settings.threads)
        self.model = model.to(self.rt.device)
        self.meta = dict(meta, processes=self.rt.world)  # DDP splits batches: other numerics
        # Everything but the epoch count: raising `epochs` continues a finished run, which gives
        # the same result as training that long from the start (no schedule depends on it).
        described = {k: v for k, v in asdict(settings).items() if k not in ("epochs", "loader_workers")}
        self.meta["fingerprint"] = fingerprint({"meta": meta, "settings": described, "code": code_digest()})
        self.steps_taken = 0
        # fused: one kernel for all parameters instead of ~10 small ops each (the small model's
        # optimiser step takes half the time on the CPU; same update up to float32 rounding)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=settings.lr, fused=True)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimiser, mode="max", factor=settings.lr_factor, patience=settings.lr_patience,
            min_lr=settings.min_lr)
        self.history: list[dict] = []
        self.best = -math.inf
        self.permutation_invariant = task == "ss"
        self.trained = self.model
        if self.rt.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            self.trained = DistributedDataParallel(self.model, device_ids=ids)

    # ------------------------------------------------------------------------ checkpoints
    def resume(self) -> int:
        """Load ``last.pt`` if it belongs to this run; return the number of finished epochs."""
        path = self.out_dir / LAST
        if not path.is_file():
            return 0
        try:
            payload = read_checkpoint(path)
        except CheckpointError as exc:  # e.g. truncated by a full disk: set it aside, start afresh
            barrier(self.rt)  # every process has tried to read it before the main one moves it
            aside = path.parent.parent / f".{path.parent.name}.{LAST}.unreadable"
            if self.rt.main:
                os.replace(path, aside)
                log.warning("%s; moved it to %s and training this run from scratch", exc, aside)
            barrier(self.rt)
            return 0
        if payload["meta"].get("fingerprint") != self.meta["fingerprint"] or "training" not in payload:
            log.info("%s was written for other settings or data; training from scratch", path)
            return 0
        if len(payload["meta"]["history"]) > self.settings.epochs:  # its extra epochs cannot be undone
            log.info("%s holds %d epochs, more than the %d asked for; training from scratch",
                     path, len(payload["meta"]["history"]), self.settings.epochs)
            return 0
        self.model.load_state_dict(payload["state_dict"])
        state = payload["training"]
        self.optimiser.load_state_dict(state["optimiser"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(payload["meta"]["history"])
        self.best = max((row["val_si_snri"] for row in self.history), default=-math.inf)
        epochs = len(self.history)
        log.info("resuming from %s after epoch %d of %d", path, epochs, self.settings.epochs)
        return epochs

    def _save(self, name: str, training: bool) -> None:
        meta = dict(self.meta, history=self.history, epochs_done=len(self.history))
        extra = None
        if training:
            extra = {"optimiser": self.optimiser.state_dict(), "scheduler": self.scheduler.state_dict()}
        save_checkpoint(self.out_dir / name, self.model, meta, training=extra)

    # ----------------------------------------------------------------------------- epochs
    def _autocast(self):
        if self.settings.mixed_precision and self.rt.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        mixture = batch["mixture"].to(self.rt.device, non_blocking=True)
        embedding = batch.get("embedding")
        if embedding is not None:
            embedding = embedding.to(self.rt.device, non_blocking=True)
        with self._autocast():
            return model(mixture, embedding).float()

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
            loss = negative_si_sdr(self._forward(self.trained, batch), targets, self.permutation_invariant)
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
            estimate = self._forward(self.model, batch)
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
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._replay_live()
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
                    self._save(BEST, training=False)
                self._save(LAST, training=True)
                self._replay_live()
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

    def _replay_live(self) -> None:
        """Rewrite the DVCLive log from the history, so a resumed run's log equals an
        uninterrupted one's (no epoch logged twice or lost). Timings are kept out of the
        plots: they differ between runs and would make logs differ."""
        if self.live_dir is None:
            return
        from dvclive import Live

        import shutil

        shutil.rmtree(self.live_dir, ignore_errors=True)
        with Live(str(self.live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:
            for row in self.history:
                live.step = row["epoch"]
                for key in ("train_loss", "val_si_snri", "lr"):
                    live.log_metric(key, row[key])
                live.next_step()
