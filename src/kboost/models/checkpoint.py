"""Checkpoint format shared by the training stage and the ``kboost`` CLI.

A checkpoint is one ``torch.save`` file holding only plain Python values and tensors, so it
loads with ``torch.load(..., weights_only=True)`` (no pickled code)::

    {"format": 1,
     "kind": "vanilla" | "boosted",
     "task": "se" | "ss" | "tse",
     "sizes": {"model": {...}}                      # vanilla: the one model's GridNetSize
              | {"small": {...}, "large": {...}},   # boosted: both models' GridNetSize
     "delay": int | None,                           # boosted: hint delay in chunks (8 ms each)
     "compression": int | None,                     # boosted: compression factor P
     "merge_start": "zeros" | "masked",             # boosted: merge attention before the clip start
                                                    # (absent in files of earlier versions: "masked")
     "delay_range": [low, high],                    # variable-delay pairs only: delays drawn in training
     "meta": {...},                                 # JSON-able: epoch, metrics, resolved params
     "state_dict": model.state_dict(),              # tensors, moved to the CPU
     "training": {"optimiser": ..., "scheduler": ...}}  # optional: what resuming needs (last.pt)

The model is rebuilt from the stored sizes, so loading needs no params.yaml.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import KboostError
from ..fsutil import atomic_file
from .boosting import BoostedPair
from ..tasks import NAMES as TASKS
from .gridnet import GridNetSize, TFGridNet

FORMAT = 1
KINDS = ("vanilla", "boosted")
_KEYS = ("format", "kind", "task", "sizes", "delay", "compression", "meta", "state_dict")
LEGACY_MERGE_START = "masked"  # what boosted checkpoints without a "merge_start" field were trained with


class CheckpointError(KboostError, ValueError):
    """A checkpoint file that is missing, unreadable or does not match this code."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about its model (everything but the weights)."""

    path: Path
    kind: str
    task: str
    sizes: dict  # role ("model", or "small" and "large") -> GridNetSize
    delay: int | None = None
    compression: int | None = None
    meta: dict = field(default_factory=dict)
    delay_range: tuple[int, int] | None = None  # a variable-delay pair: the delays it was trained on


# ------------------------------------------------------------------------------- builders
def build_vanilla(task: str, size: GridNetSize) -> TFGridNet:
    """A vanilla causal TF-GridNet (fresh weights from torch's current RNG)."""
    return TFGridNet(task, size)


def build_boosted(task: str, small_size: GridNetSize, large_size: GridNetSize,
                  delay: int, compression: int = 1, merge_start: str = "zeros",
                  delay_range: tuple[int, int] | None = None) -> BoostedPair:
    """A boosted pair: the small model is built first, then the large one, then the merge parts
    (``delay_range``: a variable-delay pair)."""
    small = TFGridNet(task, small_size)
    large = TFGridNet(task, large_size)
    return BoostedPair(small, large, delay=delay, compression=compression, merge_start=merge_start,
                       delay_range=delay_range)


def compression_factor(pair: BoostedPair) -> int:
    """The compression factor P of a boosted pair (hint channels 2 n_out -> 2 n_out / P)."""
    return pair.compression.factor


def describe(model: nn.Module) -> dict:
    """The header fields of a checkpoint of ``model`` (kind, task, sizes, delay, compression)."""
    model = _unwrap(model)
    if isinstance(model, BoostedPair):
        header = {"kind": "boosted", "task": model.task,
                  "sizes": {"small": model.small.size.to_dict(), "large": model.large.size.to_dict()},
                  "delay": int(model.delay), "compression": compression_factor(model),
                  "merge_start": model.merge_start}
        if model.delay_range is not None:
            header["delay_range"] = list(model.delay_range)
        return header
    if isinstance(model, TFGridNet):
        return {"kind": "vanilla", "task": model.task, "sizes": {"model": model.size.to_dict()},
                "delay": None, "compression": None}
    raise TypeError(f"can only checkpoint a TFGridNet or a BoostedPair, got {type(model).__name__}")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile's wrapper (its state_dict keys carry no ``_orig_mod.``)."""
    return getattr(model, "_orig_mod", model)


# ----------------------------------------------------------------------------------- save
def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict | None = None,
                    training: dict | None = None) -> None:
    """Write ``model`` and ``meta`` (plain JSON-able values) to ``path`` atomically; ``training``
    (optimiser and scheduler state dicts) makes it a checkpoint a run can resume from."""
    path = Path(path)
    meta = {} if meta is None else meta
    try:
        # Round trip through JSON: rejects objects weights_only loading could not read back, and
        # turns tuples into lists so a reloaded meta compares equal to json.load of a metrics file.
        meta = json.loads(json.dumps(meta, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint meta must be plain JSON-able values ({exc})") from exc
    model = _unwrap(model)
    payload = {"format": FORMAT, **describe(model), "meta": meta,
               "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()}}
    if training is not None:
        payload["training"] = training
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


# ----------------------------------------------------------------------------------- load
def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The raw, validated checkpoint dict (weights_only loading); errors name the file."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "no such checkpoint file"
        raise CheckpointError(f"{path}: {what}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt zip, not a torch file, disallowed pickled objects, ...
        raise CheckpointError(f"{path}: not a readable kboost checkpoint, expected a file written by "
                              f"kboost's save_checkpoint ({_unreadable_reason(path, exc)})") from exc
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{path}: not a kboost checkpoint (no 'format' field; "
                              f"found {type(payload).__name__})")
    if payload["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {payload['format']!r}, "
                              f"this version of kboost reads format {FORMAT}")
    missing = [key for key in _KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks field(s) {missing}")
    if payload["kind"] not in KINDS:
        raise CheckpointError(f"{path}: unknown model kind {payload['kind']!r}; expected one of {KINDS}")
    if payload["task"] not in TASKS:
        raise CheckpointError(f"{path}: unknown task {payload['task']!r}; expected one of {TASKS}")
    if not isinstance(payload["state_dict"], dict) or not all(
            isinstance(v, torch.Tensor) for v in payload["state_dict"].values()):
        raise CheckpointError(f"{path}: 'state_dict' must map parameter names to tensors")
    return payload


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """Why torch.load refused ``path``, from what the file starts with and torch's message."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    first = text[0][:200] if text else type(exc).__name__
    if head.startswith(b"PK"):  # torch's zip format
        if "weights only load failed" in first.lower():
            return ("it holds pickled Python objects, e.g. a whole module saved with torch.save(model), "
                    "which weights_only loading refuses")
        return f"a truncated or corrupt PyTorch zip file ({first})"
    if head[:1] == b"\x80":  # a bare pickle (torch's legacy format)
        return f"a legacy pickle that weights_only loading cannot read ({first})"
    size = path.stat().st_size
    return f"not a PyTorch file at all: {size} bytes that are neither a zip archive nor a pickle"


def _sizes(path: Path, payload: dict) -> dict:
    roles = ("model",) if payload["kind"] == "vanilla" else ("small", "large")
    sizes = payload["sizes"]
    if not isinstance(sizes, dict) or sorted(sizes) != sorted(roles):
        found = sorted(sizes) if isinstance(sizes, dict) else type(sizes).__name__
        raise CheckpointError(f"{path}: a {payload['kind']} checkpoint stores sizes for {list(roles)}, found {found}")
    try:
        return {role: GridNetSize.from_dict(dict(sizes[role]), f"{path}: sizes.{role}") for role in roles}
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad model sizes ({exc})") from exc


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the model stored in ``path`` (in eval mode) and return it with its description.

    Raises :class:`CheckpointError` naming the file if it is missing, not a checkpoint, of
    another format, or if its weights do not fit the model its header describes.
    """
    path = Path(path)
    payload = read_checkpoint(path, map_location)
    sizes = _sizes(path, payload)
    task = payload["task"]
    try:
        if payload["kind"] == "vanilla":
            model = build_vanilla(task, sizes["model"])
        else:
            model = build_boosted(task, sizes["small"], sizes["large"], int(payload["delay"]),
                                  int(payload["compression"]), payload.get("merge_start", LEGACY_MERGE_START),
                                  payload.get("delay_range"))
    except (TypeError, ValueError) as exc:  # bad delay, compression factor or merge start
        raise CheckpointError(f"{path}: cannot build the stored model ({exc})") from exc

    state_dict = payload["state_dict"]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_preview(unexpected)}")
        raise CheckpointError(f"{path}: weights do not fit the stored {payload['kind']} {task} model; "
                              + "; ".join(parts))
    wrong = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}"
             for key, value in expected.items() if state_dict[key].shape != value.shape]
    if wrong:
        raise CheckpointError(f"{path}: weights of the wrong shape (stored vs model): {_preview(wrong)}")
    model.load_state_dict(state_dict)
    model.eval()
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)  # non-persistent buffers (STFT window) follow the weights
    info = CheckpointInfo(path=path, kind=payload["kind"], task=task, sizes=sizes,
                          delay=payload["delay"], compression=payload["compression"],
                          meta=payload["meta"] if isinstance(payload["meta"], dict) else {},
                          delay_range=tuple(payload["delay_range"]) if payload.get("delay_range") else None)
    return model, info


def _preview(items: list, limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
