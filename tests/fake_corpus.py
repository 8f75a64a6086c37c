"""Test helpers: a tiny corpus in the standard layout, made of simple synthetic signals (fast,
no espeak), used by tests of everything downstream of the data sources; and tree comparison.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kboost.audio import write_audio
from kboost.sources.layout import write_index

RATE = 16000


def _voiced(rng, seconds):
    t = np.arange(int(round(seconds * RATE))) / RATE
    f0 = rng.uniform(90, 250)
    sig = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.28)) / h for h in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(2, 5) * t)) ** 2
    return (0.1 * sig * envelope).astype(np.float32)


def make_corpus(root: Path, speakers=(4, 2, 2), utts=3, seconds=1.5, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    root = Path(root)
    speech, noise, responses = [], [], []
    splits = ("train", "val", "test")
    n = 0
    for split, count in zip(splits, speakers):
        for s in range(count):
            spk = f"spk{n:02d}"
            n += 1
            for u in range(utts):
                utt = f"{spk}-{u}"
                path = f"{split}/{spk}/{utt}.flac"
                dur = seconds * (0.6 if u == 0 else 1.0)  # one utterance shorter than a clip
                write_audio(root / "speech" / path, _voiced(rng, dur), RATE)
                speech.append(dict(utt_id=utt, speaker_id=spk, split=split, path=path, seconds=dur, text="x"))
        for k in range(2):
            nid = f"{split}-n{k}"
            path = f"{split}/{nid}.flac"
            write_audio(root / "noise" / path, 0.05 * rng.standard_normal((2, int(2 * RATE))).astype(np.float32), RATE)
            noise.append(dict(noise_id=nid, split=split, kind="white", path=path, seconds=2.0))
        for r in range(2):
            room = f"{split}-room{r}"
            for d, az in enumerate((0, 30, 90, 270)):
                rid = f"{room}-{az}"
                path = f"sim/{split}/{rid}.wav"
                h = np.zeros((2, 800), np.float32)
                lead = 0 if az == 90 else 8
                h[0, 10 + lead] = 1.0
                h[1, 10 + (8 - lead)] = 0.7
                h[:, 20:] += 0.01 * rng.standard_normal((2, 780)) * np.exp(-np.arange(780) / 200)
                write_audio(root / "responses" / path, h, RATE)
                responses.append(dict(response_id=rid, split=split, set="sim", room_id=room, azimuth_deg=az,
                                      elevation_deg=0, distance_m=1.5, path=path))
    write_index("speech", root / "speech", speech)
    write_index("noise", root / "noise", noise)
    write_index("responses", root / "responses", responses)
    return root


def tree_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative POSIX path -> bytes), for byte-identity checks."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def generate_with_one_and_two_workers(generate, cfg, seed, tmp_path_factory, name) -> tuple[Path, Path]:
    """Run a corpus generator twice, with 1 and 2 workers, into fresh directories."""
    runs = []
    for workers in (1, 2):
        out = tmp_path_factory.mktemp(f"{name}_{workers}")
        generate(out, cfg, seed=seed, workers=workers)
        runs.append(out)
    return runs[0], runs[1]
