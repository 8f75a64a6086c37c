"""Embedded (offline) ambient noise: procedural binaural noise, the stand-in for WHAM!.

Writes corpus part "noise" (see :mod:`kboost.sources.layout`): 2-channel (left, right) 16 kHz
FLAC (PCM_16) at ``<split>/<noise_id>.flac``, ``index.csv`` and ``source.json``.

Kinds:

- ``coloured``: 1/f^alpha noise, alpha drawn uniformly from ``alpha_range`` (0 white, 1 pink,
  2 brown).
- ``speech_shaped``: Gaussian noise with the long-term spectrum of a babble-pool talker
  (Welch estimate from espeak speech of that talker).
- ``babble``: sum of 4-8 (``babble_talkers``) espeak talkers at random levels (+-3 dB), from
  a dedicated speaker pool (prefix "bab", own seed stream, own voices / variants); its
  variants should be disjoint from the speech corpus' variants so no talker is shared.
- ``nonstationary``: coloured noise under a random envelope: bursts (on/off segments with
  ramps and a -30..-15 dB floor) and / or slow amplitude modulation (0.5-6 Hz).

Binaural: each channel mixes a common component (reaching the right ear with an integer
interaural delay of up to ``max_itd_ms``) and an independent one, with weights sqrt(c) and
sqrt(1-c) for a drawn interaural coherence c; nonstationary envelopes are applied to both
ears. Each clip is normalised to ``TARGET_RMS_DBFS`` (over both channels), peak <= 0.95.

cfg keys (``embedded.noise`` in params.yaml); required:

- ``clips``: ``{train: int, val: int, test: int}`` clips per split (each >= 1).
- ``seconds``: clip length in seconds (> 0, <= 120).
- ``kinds``: non-empty subset of the four kinds; clip i of a split is ``kinds[i % len]``.
- ``coherence_range``: ``[lo, hi]`` with 0 <= lo <= hi <= 1.

optional (defaults in ``DEFAULTS``): ``alpha_range`` [lo, hi] in [0, 3]; ``max_itd_ms``
(0-1); ``babble_talkers`` [lo, hi] (>= 1); ``babble_speakers_per_split`` (>= 1);
``babble_voices``, ``babble_variants``, ``babble_pitch_range``, ``babble_rate_range`` (as in
the speech cfg).

Random streams: clip i of split s uses ``SeedSequence([seed, 7, s]).spawn(n)[i]``, so splits
have disjoint streams and the files are byte-identical across runs and for any ``workers``.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy.signal import welch

from ..audio import write_audio
from ..fsutil import write_json
from ..parallel import map_ordered
from . import espeak
from .embedded_speech import (
    PEAK_LIMIT, TARGET_RMS_DBFS, _int, _int_range, _per_split, _str_list, load_sentences,
    normalise_level,
)
from .layout import SAMPLE_RATE, SPLITS, write_index

KINDS = ("coloured", "speech_shaped", "babble", "nonstationary")
BABBLE_PREFIX = "bab"
DEFAULTS = {
    "alpha_range": [0.0, 2.0],
    "max_itd_ms": 0.7,
    "babble_talkers": [4, 8],
    "babble_speakers_per_split": 10,
    "babble_voices": ["en", "en-us", "en-GB-x-rp", "en-GB-scotland", "en-029", "en-US-nyc"],
    "babble_variants": ["m8", "klatt", "klatt4", "adam", "edward", "iven", "john", "max", "michel", "paul", "steph", "belinda"],
    "babble_pitch_range": [20, 80],
    "babble_rate_range": [130, 210],
}
_STREAM_CLIPS, _STREAM_BABBLE = 7, 8
_KEY = "embedded.noise"


def _float_range(cfg: dict, key: str, lo: float, hi: float) -> list[float]:
    value = cfg.get(key)
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{_KEY}.{key} must be a list [lo, hi] of two numbers, got {value!r}")
    a, b = float(value[0]), float(value[1])
    if not lo <= a <= b <= hi:
        raise ValueError(f"{_KEY}.{key} must satisfy {lo} <= lo <= hi <= {hi}, got {list(value)}")
    return [a, b]


def _number(cfg: dict, key: str, lo: float, hi: float, open_lo: bool = False) -> float:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{_KEY}.{key} must be a number, got {value!r}")
    if (value <= lo if open_lo else value < lo) or value > hi:
        raise ValueError(f"{_KEY}.{key} must be in {'(' if open_lo else '['}{lo}, {hi}], got {value}")
    return float(value)


def validate_cfg(cfg: dict) -> dict:
    """Check ``cfg`` (filling optional keys from ``DEFAULTS``); ValueError names the key."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{_KEY} must be a mapping, got {type(cfg).__name__}")
    required = {"clips", "seconds", "kinds", "coherence_range"}
    unknown = sorted(set(cfg) - required - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{_KEY}: unknown key(s) {unknown}; expected {sorted(required | set(DEFAULTS))}")
    for key in sorted(required):
        if key not in cfg:
            raise ValueError(f"{_KEY}.{key} is missing")
    full = {**DEFAULTS, **cfg}
    kinds = _str_list(full, "kinds", _KEY)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"{_KEY}.kinds: unknown kind(s) {bad}; allowed {list(KINDS)}")
    out = {
        "clips": _per_split(full, "clips", _KEY),
        "seconds": _number(full, "seconds", 0.0, 120.0, open_lo=True),
        "kinds": kinds,
        "coherence_range": _float_range(full, "coherence_range", 0.0, 1.0),
        "alpha_range": _float_range(full, "alpha_range", 0.0, 3.0),
        "max_itd_ms": _number(full, "max_itd_ms", 0.0, 1.0),
        "babble_talkers": list(_int_range(full, "babble_talkers", 1, 64, _KEY)),
        "babble_speakers_per_split": _int(full, "babble_speakers_per_split", 1, _KEY),
        "babble_voices": _str_list(full, "babble_voices", _KEY),
        "babble_variants": _str_list(full, "babble_variants", _KEY, allow_empty_item=True),
        "babble_pitch_range": list(_int_range(full, "babble_pitch_range", 0, 99, _KEY)),
        "babble_rate_range": list(_int_range(full, "babble_rate_range", 80, 450, _KEY)),
    }
    espeak.check_variants(out["babble_variants"], f"{_KEY}.babble_variants")
    return out


# --- signal generators: each returns float64 of length n with unit RMS --------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x**2)))
    return x / rms if rms > 0 else x


def _shaped(rng: np.random.Generator, n: int, gain) -> np.ndarray:
    """Gaussian noise filtered in the frequency domain; ``gain(freqs_hz)`` gives the amplitude."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    amp = np.asarray(gain(freqs), dtype=np.float64)
    amp[0] = 0.0  # no DC
    return _unit(np.fft.irfft(spec * amp, n))


def _coloured(rng, n: int, alpha: float) -> np.ndarray:
    return _shaped(rng, n, lambda f: np.maximum(f, 20.0) ** (-alpha / 2.0))


def _speech_spectrum(talker: espeak.Speaker, sentences: list[str], rng) -> tuple[np.ndarray, np.ndarray]:
    text = " ".join(sentences[int(i)] for i in rng.choice(len(sentences), size=3, replace=False))
    speech = espeak.synthesize(talker, text, SAMPLE_RATE).astype(np.float64)
    freqs, psd = welch(speech, fs=SAMPLE_RATE, nperseg=512)
    return freqs, np.sqrt(psd)


def _talker_signal(talker: espeak.Speaker, sentences: list[str], rng, n: int) -> np.ndarray:
    """At least n samples of one talker reading random sentences (wrapped if shorter)."""
    count = max(2, int(np.ceil(n / SAMPLE_RATE / 2.5)) + 1)
    picks = rng.choice(len(sentences), size=min(count, len(sentences)), replace=False)
    speech = espeak.synthesize(talker, " ".join(sentences[int(i)] for i in picks), SAMPLE_RATE).astype(np.float64)
    return _unit(speech)


def _envelope(rng, n: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    mode = rng.choice(["bursty", "modulated", "both"])
    env = np.ones(n)
    if mode in ("bursty", "both"):
        floor = 10 ** (rng.uniform(-30.0, -15.0) / 20)
        gate = np.full(n, floor)
        pos, on = 0, bool(rng.integers(2))
        while pos < n:
            length = max(1, int(rng.exponential(0.3 if on else 0.5) * SAMPLE_RATE))
            if on:
                gate[pos:pos + length] = 1.0
            pos += length
            on = not on
        ramp = int(0.01 * SAMPLE_RATE)
        kernel = np.hanning(2 * ramp + 1)
        env *= np.convolve(gate, kernel / kernel.sum(), mode="same")
    if mode in ("modulated", "both"):
        rate, depth, phase = rng.uniform(0.5, 6.0), rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi)
        env *= (1.0 - depth) + depth * (0.5 + 0.5 * np.sin(2 * np.pi * rate * t + phase)) + 1e-3
    return env


def _clip_task(task: tuple) -> dict:
    out_dir, split, index, kind, seq, seconds, cfg, talkers, sentences = task
    rng = np.random.default_rng(seq)
    n = int(round(seconds * SAMPLE_RATE))
    max_itd = int(round(cfg["max_itd_ms"] * 1e-3 * SAMPLE_RATE))
    m = n + 2 * max_itd
    coherence = float(rng.uniform(*cfg["coherence_range"]))
    itd = int(rng.integers(-max_itd, max_itd + 1)) if max_itd else 0
    params: dict = {"coherence": round(coherence, 4), "itd_samples": itd}

    if kind in ("coloured", "nonstationary"):
        alpha = float(rng.uniform(*cfg["alpha_range"]))
        params["alpha"] = round(alpha, 4)
        common, left, right = (_coloured(rng, length, alpha) for length in (m, n, n))
    elif kind == "speech_shaped":
        talker = talkers[int(rng.integers(len(talkers)))]
        freqs, amp = _speech_spectrum(talker, sentences, rng)
        params["talker"] = talker.speaker_id
        gain = lambda f: np.interp(f, freqs, amp)  # noqa: E731
        common, left, right = (_shaped(rng, length, gain) for length in (m, n, n))
    elif kind == "babble":
        lo, hi = cfg["babble_talkers"]
        k = min(int(rng.integers(lo, hi + 1)), len(talkers))
        chosen = rng.choice(len(talkers), size=k, replace=False)
        voices = [_talker_signal(talkers[int(i)], sentences, rng, m) for i in chosen]
        gains = 10 ** (rng.uniform(-3.0, 3.0, size=k) / 20)
        params["talkers"] = [talkers[int(i)].speaker_id for i in chosen]

        def mix(length: int) -> np.ndarray:
            # a different circular shift of every talker: a new, nearly uncorrelated babble
            total = np.zeros(length)
            for g, v in zip(gains, voices):
                reps = int(np.ceil((length + v.size) / v.size))
                total += g * np.roll(np.tile(v, reps), -int(rng.integers(v.size)))[:length]
            return _unit(total)

        common, left, right = mix(m), mix(n), mix(n)
    else:  # validated earlier
        raise ValueError(f"unknown noise kind {kind!r}")

    wc, wi = np.sqrt(coherence), np.sqrt(1.0 - coherence)
    left = wc * common[max_itd:max_itd + n] + wi * left
    right = wc * common[max_itd - itd:max_itd - itd + n] + wi * right
    audio = np.stack([left, right])
    if kind == "nonstationary":
        audio = audio * _envelope(rng, n)[None]
    audio = normalise_level(audio)
    noise_id = f"{split}_{index:05d}"
    rel = f"{split}/{noise_id}.flac"
    write_audio(Path(out_dir) / rel, audio, SAMPLE_RATE, subtype="PCM_16")
    return {"noise_id": noise_id, "split": split, "kind": kind, "path": rel,
            "seconds": round(n / SAMPLE_RATE, 6), "params": params}


def babble_pool(cfg: dict, seed: int) -> dict[str, list[espeak.Speaker]]:
    """The babble talkers of each split (disjoint), from their own seed stream."""
    per = cfg["babble_speakers_per_split"]
    pool = espeak.speaker_pool(
        per * len(SPLITS), int(np.random.SeedSequence([int(seed), _STREAM_BABBLE]).generate_state(1)[0]),
        cfg["babble_voices"], cfg["babble_variants"], tuple(cfg["babble_pitch_range"]),
        tuple(cfg["babble_rate_range"]), BABBLE_PREFIX,
    )
    return {split: pool[i * per:(i + 1) * per] for i, split in enumerate(SPLITS)}


def generate(out_dir: Path, cfg: dict, seed: int, workers: int = 1) -> None:
    """Write the embedded noise corpus into ``out_dir`` (existing, empty; the caller publishes
    it atomically). See the module docstring for ``cfg``."""
    cfg = validate_cfg(cfg)
    out_dir = Path(out_dir)
    sentences = load_sentences()
    talkers = babble_pool(cfg, seed)
    tasks = []
    for s, split in enumerate(SPLITS):
        n_clips = cfg["clips"][split]
        seqs = np.random.SeedSequence([int(seed), _STREAM_CLIPS, s]).spawn(n_clips)
        for i in range(n_clips):
            kind = cfg["kinds"][i % len(cfg["kinds"])]
            tasks.append((str(out_dir), split, i, kind, seqs[i], cfg["seconds"], cfg, talkers[split], sentences))
    rows = map_ordered(_clip_task, tasks, workers, desc="noise", unit="clip", chunksize=1)
    write_index("noise", out_dir, [{k: v for k, v in r.items() if k != "params"} for r in rows])
    write_json(out_dir / "source.json", {
        "kind": "embedded-procedural",
        "cfg": cfg,
        "seed": int(seed),
        "espeak_ng_version": espeak.version(),
        "target_rms_dbfs": TARGET_RMS_DBFS,
        "peak_limit": PEAK_LIMIT,
        "babble_speakers": {s: [asdict(t) for t in talkers[s]] for s in SPLITS},
        "clips": {r["noise_id"]: dict(r["params"], kind=r["kind"]) for r in rows},
    })
