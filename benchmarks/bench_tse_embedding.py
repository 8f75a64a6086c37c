"""Does a trained TSE model use the speaker embedding? Swap it for the interferer's and look.

    python benchmarks/bench_tse_embedding.py --checkpoint data/models/tse/small/best.pt \
        [--mixtures data/mixtures/tse --split val]

For every mixture of the split whose interferer is enrolled as the target of another mixture
(same split, so the same speakers), the model runs twice: with the target's d-vector and with
the interferer's. Printed: mean SI-SDR (dB, both ears) of the output against the target's and
against the interferer's binaural image in both cases, and how often the output with the
swapped embedding is closer to the interferer. A model that ignores the embedding gives the
same output both times; one that uses it follows the embedding to the other talker.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from kboost.dataset import MixtureDataset
from kboost.metrics import si_sdr
from kboost.models.checkpoint import load_checkpoint


def _ears(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean([si_sdr(estimate[ear], reference[ear]) for ear in range(reference.shape[0])]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--mixtures", default="data/mixtures/tse", type=Path)
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--limit", type=int, default=None, help="first N mixtures")
    args = parser.parse_args()

    model, info = load_checkpoint(args.checkpoint)
    if info.task != "tse":
        raise SystemExit(f"{args.checkpoint}: a {info.task} model; this probe needs a TSE model")
    data = MixtureDataset(args.mixtures, args.split, limit=args.limit)
    manifest = data.manifest
    enrolled = {row.t1_speaker_id: int(row.embedding_row) for row in manifest.itertuples()}
    rows = {"own": [], "swapped": []}
    closer = 0
    for index, row in enumerate(manifest.itertuples()):
        if row.t2_speaker_id not in enrolled:
            continue
        item = data[index]
        interferer_image = data._read(row.path_interferer).numpy()
        target_image = item["targets"][0].numpy()
        swapped = torch.from_numpy(np.array(data.embeddings[enrolled[row.t2_speaker_id]]))
        with torch.inference_mode():
            for name, embedding in (("own", item["embedding"]), ("swapped", swapped)):
                out = model(item["mixture"][None], embedding[None])[0, 0].numpy()
                rows[name].append((_ears(out, target_image), _ears(out, interferer_image)))
        own, other = rows["own"][-1], rows["swapped"][-1]
        closer += other[1] > other[0]
    count = len(rows["own"])
    print(f"{args.checkpoint} on {args.mixtures}/{args.split}: {count} mixtures whose interferer is enrolled")
    for name in ("own", "swapped"):
        values = np.array(rows[name])
        print(f"  {name:>7} embedding: SI-SDR to target {values[:, 0].mean():6.2f} dB, "
              f"to interferer {values[:, 1].mean():6.2f} dB")
    print(f"  swapped output closer to the interferer than to the target: {closer} of {count}")


if __name__ == "__main__":
    main()
