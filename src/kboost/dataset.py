"""Read one split of synthesised mixtures as a torch Dataset, driven by its manifest; one
training epoch's view of it (order, crops, shard) and the batching of its items."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .audio import read_audio
from .tasks import get_task

_EPOCH_STREAM = 1_000_003  # spreads (seed, epoch) pairs over generator seeds


class MixtureDataset(Dataset):
    """Items of ``data/mixtures/<task>/<split>``.

    Each item is a dict with ``id`` (str), ``mixture`` [2, T], ``targets`` [S, 2, T]
    (S = 1 for SE and TSE, 2 for SS) and, for TSE, ``embedding`` [256].
    """

    def __init__(self, task_dir: str | Path, split: str, limit: int | None = None):
        self.task_dir = Path(task_dir)
        self.split_dir = self.task_dir / split
        manifest_path = self.split_dir / "manifest.csv"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: no manifest; run `dvc repro synthesize@<task>` first")
        summary = json.loads((self.task_dir / "summary.json").read_text())
        self.task = summary["task"]
        self.sample_rate = summary["sample_rate"]
        self.manifest = pd.read_csv(manifest_path, keep_default_na=False)
        if limit is not None:
            self.manifest = self.manifest.iloc[:limit]
        self.embeddings = None
        if get_task(self.task).needs_embedding:
            self.embeddings = np.load(self.split_dir / "embeddings.npy", mmap_mode="r")
            if len(self.embeddings) < len(self.manifest):
                raise ValueError(f"{self.split_dir / 'embeddings.npy'}: {len(self.embeddings)} rows for "
                                 f"{len(self.manifest)} mixtures")

    def __len__(self) -> int:
        return len(self.manifest)

    def _read(self, relative: str) -> torch.Tensor:
        audio = read_audio(self.split_dir / relative, sample_rate=self.sample_rate, channels=2, allow_silent=True)
        return torch.from_numpy(audio)

    def __getitem__(self, index: int) -> dict:
        row = self.manifest.iloc[index]
        item = {
            "id": row["mixture_id"],
            "mixture": self._read(row["path_mixture"]),
            "targets": torch.stack([self._read(row[f"path_{stem}"]) for stem in get_task(self.task).targets]),
        }
        if self.embeddings is not None:
            item["embedding"] = torch.from_numpy(np.array(self.embeddings[int(row["embedding_row"])]))
        return item


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


def collate(items: list[dict]) -> dict:
    """Stack items (of a MixtureDataset or an EpochView) into a batch; ``id`` stays a list."""
    batch = {"id": [item["id"] for item in items],
             "mixture": torch.stack([item["mixture"] for item in items]),
             "targets": torch.stack([item["targets"] for item in items])}
    if "embedding" in items[0]:
        batch["embedding"] = torch.stack([item["embedding"] for item in items])
    return batch
