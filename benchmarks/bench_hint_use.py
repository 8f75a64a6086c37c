"""Does a trained boosted pair use the large model's hints? Replace them and look.

    python benchmarks/bench_hint_use.py --checkpoint data/models/ss/boosted-d6/best.pt \
        [--mixtures data/mixtures/ss --split val --limit 48]

Runs the pair on every mixture of the split three times (whole clips; equal to chunk-by-chunk
streaming with the same delay to 1e-5, tests/test_streaming.py): with its own hints, with the
hints set to zero (what the device sees before the first hint arrives), and with the hints of
another mixture (the next one of the split: a hint stream that is well formed but describes other
audio). Printed: mean SI-SDRi (dB) of each, and the per-utterance differences against the own
hints with 95% confidence half-widths. A pair whose gain comes only from extra training of its
small model scores the same whatever the hints; one that uses them loses when they are replaced.
The validation split is the default: nothing here should be read off the test split.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kboost.dataset import MixtureDataset, collate
from kboost.evaluation import confidence_interval
from kboost.metrics import match_permutation, score_pairs
from kboost.models.boosting import BoostedPair
from kboost.models.checkpoint import load_checkpoint
from kboost.models.frontend import HOP


def _si_sdr(estimates: np.ndarray, references: np.ndarray) -> float:
    """SI-SDR as the evaluation scores it (matched sources, mean over sources and ears), without
    PESQ and STOI."""
    return score_pairs(match_permutation(estimates, references), references, perceptual=False)["si_sdr"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--mixtures", type=Path, help="default: data/mixtures/<task of the checkpoint>")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--limit", type=int, default=None, help="first N mixtures")
    args = parser.parse_args()

    pair, info = load_checkpoint(args.checkpoint)
    if not isinstance(pair, BoostedPair):
        raise SystemExit(f"{args.checkpoint}: not a boosted pair; this probe needs one")
    data = MixtureDataset(args.mixtures or Path("data/mixtures") / info.task, args.split, limit=args.limit)
    batch = collate([data[i] for i in range(len(data))])
    mixture, embedding, targets = batch["mixture"], batch.get("embedding"), batch["targets"]
    length = mixture.shape[-1]
    padded = torch.nn.functional.pad(mixture, (0, -length % HOP))  # whole 8 ms chunks, as evaluation runs

    def replaced_hint(mode: str):
        """A forward hook on the compression that swaps what it sends for ``mode``'s hints."""
        def hook(module, inputs, output):
            hint, state = output
            return (torch.zeros_like(hint) if mode == "zeros" else torch.roll(hint, shifts=-1, dims=0)), state
        return hook

    # The mixture's own SI-SDR, subtracted from every mode's (SI-SDRi), is scored once.
    references = [targets[i].numpy() for i in range(len(data))]
    baseline = np.array([score_pairs(np.broadcast_to(mixture[i].numpy(), ref.shape), ref, perceptual=False)["si_sdr"]
                         for i, ref in enumerate(references)])
    scores = {}
    for mode in ("own", "zeros", "other"):
        handle = None if mode == "own" else pair.compression.register_forward_hook(replaced_hint(mode))
        with torch.inference_mode():
            out = pair(padded, embedding)[..., :length].numpy()
        if handle is not None:
            handle.remove()
        scores[mode] = pd.Series([_si_sdr(out[i], ref) for i, ref in enumerate(references)]) - baseline
    print(f"{args.checkpoint} (delay {info.delay}, P {info.compression}) on {data.task_dir}/{args.split}, "
          f"{len(data)} mixtures: SI-SDRi (dB)")
    for mode, label in (("own", "own hints"), ("zeros", "hints set to zero"), ("other", "another mixture's hints")):
        line = f"  {label:<24} {scores[mode].mean():6.2f}"
        if mode != "own":
            diff = scores[mode] - scores["own"]
            line += f"   change {diff.mean():+.2f} ± {confidence_interval(diff):.2f}"
        print(line)


if __name__ == "__main__":
    main()
