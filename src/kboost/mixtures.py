"""Binaural mixture synthesis for speech enhancement (SE), separation (SS) and target speech
extraction (TSE).

Synthesis runs in two phases so that results never depend on the number of workers:

1. *plan* (one process, cheap): for every mixture, a random generator seeded from
   ``(seed, task, split, index)`` picks talkers, utterances, segments, a room and directions,
   a noise clip and all levels. Only the corpus indexes are read.
2. *render* (parallel): each planned row is turned into audio by a pure function of the row.

Every talker is convolved with its binaural room response (left, right); the targets are these
reverberant images at the two ears. Stems are rounded to the 16-bit grid before they are
summed, so the stored mixture is exactly the sum of the stored stems.

Output layout of one task (``data/mixtures/<task>``)::

    <split>/manifest.csv          one row per mixture: every choice, gain and file
    <split>/<stem>/<id>.flac      stems: mixture, then the task's sources and noise (16-bit, 2 ch)
    <split>/embeddings.npy        TSE only: [N, 256] d-vectors, row i for manifest row i
    summary.json                  counts and settings
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import KboostError
from . import speaker
from .audio import AudioError, quantize_pcm16, read_audio, write_audio
from .fsutil import atomic_dir, remove_stale_temporaries, write_json
from .parallel import map_ordered
from .params import SPLITS
from .sources.layout import read_index
from .tasks import NAMES as TASKS, TASKS as TASK_FACTS

log = logging.getLogger(__name__)

SILENCE_RMS = 1e-5  # a talker segment quieter than this would need an absurd gain


class SynthesisError(KboostError, ValueError):
    """The corpus cannot provide what the requested mixtures need."""


@dataclass(frozen=True)
class Corpus:
    """The three corpus parts (indexes plus their directories)."""

    speech: pd.DataFrame
    noise: pd.DataFrame
    responses: pd.DataFrame
    roots: dict

    @classmethod
    def load(cls, corpus_dir: str | Path) -> "Corpus":
        corpus_dir = Path(corpus_dir)
        roots = {part: corpus_dir / part for part in ("speech", "noise", "responses")}
        return cls(
            speech=read_index("speech", roots["speech"]),
            noise=read_index("noise", roots["noise"]),
            responses=read_index("responses", roots["responses"]),
            roots={k: str(v) for k, v in roots.items()},
        )


def _angle_between(a: float, b: float) -> float:
    diff = abs(a - b) % 360.0
    return min(diff, 360.0 - diff)


def _settings(task: str, data_cfg: dict) -> dict:
    """The task's level settings as (talker-2 offset range, noise SNR range, min separation)."""
    cfg = data_cfg[task]
    if task == "se":
        return {"second": None, "snr": cfg["snr_db"], "separation": 0.0}
    if task == "ss":
        return {"second": cfg["level_diff_db"], "snr": cfg["noise_snr_db"], "separation": cfg["min_separation_deg"]}
    # TSE: the interferer sits sir_db below the target.
    low, high = cfg["sir_db"]
    return {"second": [-high, -low], "snr": cfg["noise_snr_db"], "separation": cfg["min_separation_deg"]}


def plan_split(
    corpus: Corpus,
    task: str,
    split: str,
    count: int,
    clip_seconds: float,
    data_cfg: dict,
    response_sets: list[str],
    seed: int,
) -> pd.DataFrame:
    """Choose everything about ``count`` mixtures of ``task`` in ``split``; no audio is read."""
    if task not in TASKS:
        raise SynthesisError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    rate = data_cfg["sample_rate"]
    clip = int(round(clip_seconds * rate))
    speech = corpus.speech[corpus.speech["split"] == split]
    noise = corpus.noise[corpus.noise["split"] == split].reset_index(drop=True)
    responses = corpus.responses[
        (corpus.responses["split"] == split) & corpus.responses["set"].isin(response_sets)
    ]
    n_talkers = len(TASK_FACTS[task].talkers)
    utterances = {spk: group.reset_index(drop=True) for spk, group in speech.groupby("speaker_id", sort=True)}
    speakers = sorted(utterances)
    enrols = TASK_FACTS[task].needs_embedding  # the target's d-vector comes from another utterance
    if enrols:
        # The target needs a second utterance for enrolment.
        target_pool = [s for s in speakers if len(utterances[s]) >= 2]
    else:
        target_pool = speakers
    if len(speakers) < n_talkers or not target_pool:
        raise SynthesisError(f"{task}/{split}: the speech corpus has {len(speakers)} speaker(s) in split "
                             f"{split!r}; {task} needs {n_talkers} (and, for TSE, 2 utterances of a target)")
    if noise.empty:
        raise SynthesisError(f"{task}/{split}: the noise corpus has no clips in split {split!r}")
    rooms = {key: group.reset_index(drop=True)
             for key, group in responses.groupby(["set", "room_id"], sort=True)
             if len(group) >= n_talkers}
    if not rooms:
        raise SynthesisError(f"{task}/{split}: no room of response sets {response_sets} has "
                             f"{n_talkers} direction(s) in split {split!r}; check profiles.*.data.response_sets")
    sets = sorted({key[0] for key in rooms})
    rooms_by_set = {s: [key for key in sorted(rooms) if key[0] == s] for s in sets}
    settings = _settings(task, data_cfg)

    rows = []
    for index in range(count):
        entropy = [seed, TASKS.index(task), SPLITS.index(split), index]
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        row = {
            "mixture_id": f"{task}-{split}-{index:06d}",
            "task": task, "split": split, "seed": "-".join(map(str, entropy)),
            "sample_rate": rate, "clip_samples": clip,
        }
        first = target_pool[rng.integers(len(target_pool))]
        chosen = [first]
        if n_talkers == 2:
            others = [s for s in speakers if s != first]
            chosen.append(others[rng.integers(len(others))])
        set_name = sets[rng.integers(len(sets))]
        room_key = rooms_by_set[set_name][rng.integers(len(rooms_by_set[set_name]))]
        room = rooms[room_key]
        row["response_set"], row["room_id"] = room_key
        first_response = int(rng.integers(len(room)))
        picked = [first_response]
        if n_talkers == 2:
            azimuths = room["azimuth_deg"].to_numpy(float)
            candidates = [j for j in range(len(room)) if j != first_response
                          and _angle_between(azimuths[j], azimuths[first_response]) >= settings["separation"]]
            if not candidates:  # room too sparse: take the direction farthest away
                others = [j for j in range(len(room)) if j != first_response]
                candidates = [max(others, key=lambda j: _angle_between(azimuths[j], azimuths[first_response]))]
            picked.append(candidates[rng.integers(len(candidates))])
        level = rng.uniform(*data_cfg["level_dbfs"])
        for k, (stem, spk) in enumerate(zip(TASK_FACTS[task].talkers, chosen), start=1):
            utts = utterances[spk]
            u = int(rng.integers(len(utts)))
            # Index durations are rounded; keep one sample of margin so the segment always fits.
            length = max(1, int(np.floor(float(utts.loc[u, "seconds"]) * rate)) - 1)
            if length >= clip:
                src_start, dst_start, seg = int(rng.integers(length - clip + 1)), 0, clip
            else:  # short utterance: place it whole at a random position in the clip
                src_start, dst_start, seg = 0, int(rng.integers(clip - length + 1)), length
            resp = room.loc[picked[k - 1]]
            offset = 0.0 if k == 1 else rng.uniform(*settings["second"])
            row.update({
                f"t{k}_stem": stem, f"t{k}_speaker_id": spk, f"t{k}_utt_id": utts.loc[u, "utt_id"],
                f"t{k}_file": utts.loc[u, "path"], f"t{k}_src_start": src_start,
                f"t{k}_dst_start": dst_start, f"t{k}_samples": seg,
                f"t{k}_response_id": resp["response_id"], f"t{k}_response_file": resp["path"],
                f"t{k}_azimuth_deg": float(resp["azimuth_deg"]), f"t{k}_elevation_deg": float(resp["elevation_deg"]),
                f"t{k}_distance_m": float(resp["distance_m"]), f"t{k}_level_dbfs": level + offset,
            })
            if enrols and k == 1:
                enrol = [j for j in range(len(utts)) if j != u]
                e = enrol[rng.integers(len(enrol))]
                row["enrol_utt_id"] = utts.loc[e, "utt_id"]
                row["enrol_file"] = utts.loc[e, "path"]
        if n_talkers == 2:
            row["separation_deg"] = _angle_between(row["t1_azimuth_deg"], row["t2_azimuth_deg"])
        n = int(rng.integers(len(noise)))
        noise_len = int(round(float(noise.loc[n, "seconds"]) * rate))
        row.update({
            "noise_id": noise.loc[n, "noise_id"], "noise_file": noise.loc[n, "path"],
            "noise_start": int(rng.integers(max(1, noise_len - clip + 1))),
            "snr_db": rng.uniform(*settings["snr"]),
        })
        for stem in TASK_FACTS[task].stems:
            row[f"path_{stem}"] = f"{stem}/{row['mixture_id']}.flac"
        rows.append(row)
    return pd.DataFrame(rows)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _talker_image(row: dict, k: int, roots: dict) -> np.ndarray:
    rate, clip = row["sample_rate"], row["clip_samples"]
    path = Path(roots["speech"]) / row[f"t{k}_file"]
    start, seg = row[f"t{k}_src_start"], row[f"t{k}_samples"]
    # Decode only the segment: LibriSpeech utterances run up to 35 s for a 5 s clip.
    dry = read_audio(path, sample_rate=rate, channels=1, start=start, frames=seg)[0]
    if dry.size < seg:
        raise AudioError(f"{path}: has {start + dry.size} samples, shorter than its index entry says "
                         f"(needs {start + seg}); regenerate the speech index")
    segment = np.zeros(clip, dtype=np.float64)
    segment[row[f"t{k}_dst_start"]:row[f"t{k}_dst_start"] + seg] = dry
    if _rms(segment) < SILENCE_RMS:
        raise AudioError(f"{path}: samples {start}..{start + seg} are silent; cannot set a talker level")
    response = read_audio(Path(roots["responses"]) / row[f"t{k}_response_file"], sample_rate=rate, channels=2)
    from scipy.signal import oaconvolve  # lazy: readers of the dataset do not need scipy
    image = oaconvolve(segment[None, :], response.astype(np.float64), axes=-1)[:, :clip]
    level = 10.0 ** (row[f"t{k}_level_dbfs"] / 20.0)
    return image * (level / max(_rms(image), 1e-12))


def _noise_segment(row: dict, roots: dict) -> np.ndarray:
    path = Path(roots["noise"]) / row["noise_file"]
    noise = read_audio(path, sample_rate=row["sample_rate"], channels=2).astype(np.float64)
    clip = row["clip_samples"]
    # Clips shorter than the mixture are looped (WHAM! has a few short ones).
    idx = (row["noise_start"] + np.arange(clip)) % noise.shape[1]
    return noise[:, idx]


def peak_scale(parts: list[np.ndarray], peak_limit: float) -> float:
    """Gain (at most 1) that brings the mixture of ``parts`` and every part itself to at most
    ``peak_limit``. Parts count too: a loud image can exceed the mixture's peak where another
    source cancels it, and every stem is stored on the 16-bit grid."""
    peak = max(float(np.max(np.abs(x))) for x in [np.sum(parts, axis=0), *parts])
    return min(1.0, peak_limit / peak)


def render_mixture(job: tuple[dict, dict, str, float]) -> dict:
    """Write one planned mixture's stems; return the gains actually applied."""
    row, roots, split_dir, peak_limit = job
    task = row["task"]
    images = [_talker_image(row, k, roots) for k in range(1, len(TASK_FACTS[task].talkers) + 1)]
    speech = np.sum(images, axis=0)
    noise = _noise_segment(row, roots)
    noise_rms = _rms(noise)
    if noise_rms < SILENCE_RMS:
        raise AudioError(f"{Path(roots['noise']) / row['noise_file']}: segment at {row['noise_start']} is silent")
    noise *= _rms(speech) / noise_rms * 10.0 ** (-row["snr_db"] / 20.0)
    scale = peak_scale([*images, noise], peak_limit)
    stems = [quantize_pcm16(x * scale) for x in images] + [quantize_pcm16(noise * scale)]
    mix = np.sum(stems, axis=0, dtype=np.float64).astype(np.float32)  # exact: all on the 16-bit grid
    split_dir = Path(split_dir)
    for stem, audio in zip(TASK_FACTS[task].stems, [mix] + stems):
        write_audio(split_dir / row[f"path_{stem}"], audio, row["sample_rate"], subtype="PCM_16")
    return {"scale": scale, "peak": float(np.max(np.abs(mix)))}


def _embed_file(job: tuple[str, int]) -> np.ndarray:
    path, rate = job
    return speaker.embed_utterance(read_audio(path, sample_rate=rate, channels=1)[0], rate)


def synthesize_task(
    task: str,
    corpus_dir: str | Path,
    out_dir: str | Path,
    params: dict,
    profile: dict,
) -> dict:
    """Plan and render every split of ``task`` into ``out_dir`` (published atomically)."""
    data_cfg = params["data"]
    pdata = profile["data"]
    corpus = Corpus.load(corpus_dir)
    remove_stale_temporaries(out_dir)  # leftovers of a killed earlier run
    workers = pdata["workers"]
    summary = {"task": task, "seed": params["seed"], "clip_seconds": pdata["clip_seconds"],
               "sample_rate": data_cfg["sample_rate"], "stems": list(TASK_FACTS[task].stems),
               "targets": list(TASK_FACTS[task].targets), "splits": {}}
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            plan = plan_split(corpus, task, split, pdata["mixtures"][split], pdata["clip_seconds"],
                              data_cfg, pdata["response_sets"], params["seed"])
            split_dir = tmp / split
            for stem in TASK_FACTS[task].stems:
                (split_dir / stem).mkdir(parents=True)
            jobs = [(row, corpus.roots, str(split_dir), data_cfg["peak_limit"]) for row in plan.to_dict("records")]
            rendered = map_ordered(render_mixture, jobs, workers, desc=f"{task}/{split} mixtures", unit="mix")
            manifest = pd.concat([plan, pd.DataFrame(rendered)], axis=1)
            if TASK_FACTS[task].needs_embedding:
                files = sorted(set(manifest["enrol_file"]))
                jobs = [(str(Path(corpus.roots["speech"]) / f), data_cfg["sample_rate"]) for f in files]
                vectors = map_ordered(_embed_file, jobs, workers, desc=f"{task}/{split} d-vectors", unit="utt")
                row_of = {f: i for i, f in enumerate(files)}
                embeddings = np.stack([vectors[row_of[f]] for f in manifest["enrol_file"]]).astype(np.float32)
                np.save(split_dir / "embeddings.npy", embeddings)
                manifest["embedding_row"] = np.arange(len(manifest))
            manifest.to_csv(split_dir / "manifest.csv", index=False, float_format="%.6g", lineterminator="\n")
            summary["splits"][split] = {
                "mixtures": len(manifest),
                "hours": round(len(manifest) * pdata["clip_seconds"] / 3600.0, 4),
                "peak_limited": int((manifest["scale"] < 1.0).sum()),
                "speakers": int(pd.concat([manifest[c] for c in manifest if c.endswith("_speaker_id")]).nunique()),
            }
            log.info("%s/%s: %d mixtures", task, split, len(manifest))
        write_json(tmp / "summary.json", summary)
    return summary
