"""What a training run keeps on disk in its folder: ``best.pt``, ``last.pt`` and the resolved
``params.yaml`` next to them, and the fingerprint that decides whether ``last.pt`` is resumed.

``last.pt`` holds the weights, the optimiser and scheduler state and the history after each
epoch; ``best.pt`` the weights of the best validation epoch so far. A ``last.pt`` is resumed only
if it was written for the same model, data, settings (all but the epoch count) and code, and
holds no more epochs than asked for (extra epochs cannot be undone: the run retrains from
scratch). An unreadable one (e.g. truncated by a full disk) is set aside and the run restarts.
Only the main process writes; every process reads.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from torch import nn

from .distributed import Runtime, barrier
from .models.checkpoint import CheckpointError, read_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

BEST, LAST, PARAMS = "best.pt", "last.pt", "params.yaml"
# Settings left out of the fingerprint: raising `epochs` continues a finished run, which gives the
# same result as training that long from the start (no schedule depends on it); loader workers
# change no numbers.
UNFINGERPRINTED = ("epochs", "loader_workers")


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


class RunStore:
    """The checkpoints of one run in ``out_dir``.

    ``meta`` (JSON-able, e.g. resolved params) is stored in both checkpoints, with the number of
    processes (DDP splits batches: other numerics), the fingerprint of ``meta``, ``settings`` (a
    dict; :data:`UNFINGERPRINTED` keys left out) and the code, and the history.
    """

    def __init__(self, out_dir: str | os.PathLike, meta: dict, settings: dict, rt: Runtime):
        self.out_dir, self.rt = Path(out_dir), rt
        self.meta = dict(meta, processes=rt.world)
        described = {k: v for k, v in settings.items() if k not in UNFINGERPRINTED}
        self.meta["fingerprint"] = fingerprint({"meta": meta, "settings": described, "code": code_digest()})

    def resume(self, model: nn.Module, optimiser, scheduler, epochs: int) -> list[dict]:
        """Load ``last.pt`` into ``model``, ``optimiser`` and ``scheduler`` if it belongs to this
        run of ``epochs`` epochs; return its history (empty: train from scratch)."""
        path = self.out_dir / LAST
        if not path.is_file():
            return []
        try:
            payload = read_checkpoint(path)
        except CheckpointError as exc:  # e.g. truncated by a full disk: set it aside, start afresh
            barrier(self.rt)  # every process has tried to read it before the main one moves it
            aside = path.parent.parent / f".{path.parent.name}.{LAST}.unreadable"
            if self.rt.main:
                os.replace(path, aside)
                log.warning("%s; moved it to %s and training this run from scratch", exc, aside)
            barrier(self.rt)
            return []
        if payload["meta"].get("fingerprint") != self.meta["fingerprint"] or "training" not in payload:
            log.info("%s was written for other settings or data; training from scratch", path)
            return []
        if len(payload["meta"]["history"]) > epochs:  # its extra epochs cannot be undone
            log.info("%s holds %d epochs, more than the %d asked for; training from scratch",
                     path, len(payload["meta"]["history"]), epochs)
            return []
        model.load_state_dict(payload["state_dict"])
        state = payload["training"]
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(payload["meta"]["history"])
        log.info("resuming from %s after epoch %d of %d", path, len(history), epochs)
        return history

    def create(self) -> None:
        """Make the run's folder (main process, before the first checkpoint)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def save_best(self, model: nn.Module, history: list[dict]) -> None:
        """``best.pt``: the weights after the last epoch of ``history`` (no training state)."""
        self._save(BEST, model, history, None)

    def save_last(self, model: nn.Module, history: list[dict], optimiser, scheduler) -> None:
        """``last.pt``: what a killed run resumes from after the last epoch of ``history``."""
        self._save(LAST, model, history, {"optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict()})

    def _save(self, name: str, model: nn.Module, history: list[dict], training: dict | None) -> None:
        meta = dict(self.meta, history=history, epochs_done=len(history))
        save_checkpoint(self.out_dir / name, model, meta, training=training)

    def write_resolved_params(self, resolved: dict) -> None:
        """``params.yaml`` next to the checkpoints: what the run was resolved to (written atomically)."""
        import yaml

        from .fsutil import atomic_file

        with atomic_file(self.out_dir / PARAMS) as tmp:
            tmp.write_text(yaml.safe_dump(resolved, sort_keys=True))
