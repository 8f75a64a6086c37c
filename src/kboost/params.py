"""Schema-checked loading of params.yaml.

Every stage calls :func:`load_params` first, so a bad value stops the pipeline at the first
stage with one message that names the key and what is allowed, instead of a traceback from
deep inside numpy or torch later on.
"""
from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import KboostError
from .tasks import NAMES as TASKS

SPLITS = ("train", "val", "test")
SOURCES = {
    "speech": ("embedded", "librispeech"),
    "noise": ("embedded", "wham"),
    "responses": ("embedded", "measured"),
}
MODEL_ROLES = ("small", "medium", "large")
COMPRESSIONS = (1, 2, 4)  # P of the paper's ablation
BOOSTED_INITS = ("scratch", "small")  # a pair's small model: fresh weights, or the trained vanilla small
MERGE_STARTS = ("zeros", "masked")  # = models.layers.LocalAttention.STARTS (params stay torch-free)
HINT_CODECS = ("float16", "int8", "int4")  # = kboost.hint_codec.CODECS less float32 (as trained)
LINK_JITTERS = ("geometric", "uniform")
LINK_POLICIES = ("newest", "zeros")
EMBEDDED_RESPONSE_SETS = ("simulated_room", "anechoic_hrtf")
CHUNK_SAMPLES = 128  # 8 ms at 16 kHz: the models' hop, fixed by the paper


class ParamsError(KboostError, ValueError):
    """An invalid or missing parameter; the message names the key."""


# Every key params.yaml may hold: a nested mapping of known keys (None: a value, not descended
# into); ANY stands for a name the user chooses (profiles, measured response sets).
ANY = "*"
_PROFILE_SCHEMA = {
    "models": {role: {"emb_dim": None, "hidden": None, "blocks": None, "heads": None, "window": None}
               for role in ("small", "medium", "large")},
    "data": {"sources": {"speech": None, "noise": None, "responses": None}, "response_sets": None,
             "clip_seconds": None, "mixtures": None, "workers": None,
             "embedded": {"speakers": None, "utterances_per_speaker": None, "noise_clips": None, "rooms": None,
                          "directions_per_room": None, "anechoic_directions": None}},
    "train": {"epochs": {"small": None, "medium": None, "large": None, "boosted": None}, "boosted_init": None,
              "lr": None, "batch_size": None, "crop_seconds": None,
              "train_mixtures": None, "val_mixtures": None, "threads": None, "processes": None,
              "loader_workers": None},
    "eval": {"test_mixtures": None, "batch_size": None, "workers": None, "threads": None, "engine": None},
}
SCHEMA = {
    "seed": None, "profile": None, "tasks": None, "delays": None, "delay": None,
    "data": {"sample_rate": None, "level_dbfs": None, "peak_limit": None, "embedding_model": None,
             "se": {"snr_db": None},
             "ss": {"level_diff_db": None, "noise_snr_db": None, "min_separation_deg": None},
             "tse": {"sir_db": None, "noise_snr_db": None, "min_separation_deg": None}},
    "model": {"compression": None, "merge_start": None},
    "train": {"lr_factor": None, "lr_patience": None, "min_lr": None, "clip_norm": None,
              "mixed_precision": None, "cpu_lstm": None},
    "ablation": {"compressions": None, "delays": None},
    "variable_delay": {"range": None},
    "link": {"loss_rates": None, "burst_chunks": None, "jitter_chunks": None, "jitter": None, "policy": None,
             "max_age": None, "test_mixtures": None},
    "hint_cost": {"codecs": None},
    "embedded": {
        "speech": {"voices": None, "variants": None, "pitch_range": None, "rate_range": None,
                   "sentences_per_utterance": None},
        "noise": {"seconds": None, "kinds": None, "coherence_range": None},
        "rooms": {"room_size_range": None, "rt60_range": None, "distance_range": None, "elevation_limit_deg": None,
                  "max_order": None, "response_seconds": None, "azimuth_bin_deg": None,
                  "azimuth_bin_pattern": None, "head_height_range": None, "wall_margin_m": None}},
    "real": {"downloads_dir": None,
             "librispeech": {"mirror": None, "subsets": None, "md5": None, "min_seconds": None,
                             "max_utterances": None, "keep_extracted": None},
             "wham": {"url": None, "checksum": None, "splits": None, "max_files": None, "keep_extracted": None},
             "responses": {ANY: {"files": None, "ids": None, "checksums": None, "convert": None}}},
    "profiles": {ANY: _PROFILE_SCHEMA},
}


def unknown_keys(mapping: dict, schema: dict, prefix: str = "") -> list[tuple[str, str | None]]:
    """(dotted unknown key, closest known key or None) for every key ``schema`` does not know."""
    found = []
    for key, value in mapping.items():
        if key in schema:
            sub = schema[key]
        elif ANY in schema:
            sub = schema[ANY]
        else:
            close = difflib.get_close_matches(str(key), [k for k in schema if k != ANY], n=1, cutoff=0.6)
            found.append((f"{prefix}{key}", f"{prefix}{close[0]}" if close else None))
            continue
        if isinstance(sub, dict) and isinstance(value, dict):
            found += unknown_keys(value, sub, f"{prefix}{key}.")
    return found


class _Checker:
    """Walks a nested mapping, keeping the dotted key path for error messages."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> None:
        raise ParamsError(f"{self.source}: {key}: {message}")

    def section(self, mapping: dict, key: str, prefix: str = "") -> dict:
        name = f"{prefix}{key}"
        if not isinstance(mapping, dict) or key not in mapping:
            self.fail(name, "missing section")
        value = mapping[key]
        if not isinstance(value, dict):
            self.fail(name, f"must be a mapping, got {value!r}")
        return value

    def value(self, mapping: dict, key: str, prefix: str = "") -> Any:
        if key not in mapping:
            self.fail(f"{prefix}{key}", "missing")
        return mapping[key]

    def integer(self, mapping: dict, key: str, prefix: str = "", minimum: int | None = None) -> int:
        value = self.value(mapping, key, prefix)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"{prefix}{key}", f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            self.fail(f"{prefix}{key}", f"must be >= {minimum}, got {value}")
        return value

    def number(self, mapping: dict, key: str, prefix: str = "", positive: bool = False) -> float:
        value = self.value(mapping, key, prefix)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"{prefix}{key}", f"must be a number, got {value!r}")
        if positive and value <= 0:
            self.fail(f"{prefix}{key}", f"must be > 0, got {value}")
        return float(value)

    def range(self, mapping: dict, key: str, prefix: str = "") -> tuple[float, float]:
        value = self.value(mapping, key, prefix)
        name = f"{prefix}{key}"
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            self.fail(name, f"must be a [low, high] pair of numbers, got {value!r}")
        if value[0] > value[1]:
            self.fail(name, f"range is reversed: low {value[0]} > high {value[1]}; write [{value[1]}, {value[0]}]")
        return float(value[0]), float(value[1])

    def choice(self, mapping: dict, key: str, allowed, prefix: str = "") -> str:
        value = self.value(mapping, key, prefix)
        if value not in allowed:
            self.fail(f"{prefix}{key}", f"unknown value {value!r}; allowed: {', '.join(map(str, allowed))}")
        return value

    def optional_integer(self, mapping: dict, key: str, prefix: str = "", minimum: int | None = None) -> int | None:
        """An integer, or null for "no limit"."""
        if self.value(mapping, key, prefix) is None:
            return None
        return self.integer(mapping, key, prefix, minimum)

    def integer_list(self, mapping: dict, key: str, prefix: str = "", what: str = "a list of integers",
                     non_empty: bool = False) -> list[int]:
        value = self.value(mapping, key, prefix)
        if (not isinstance(value, list) or (non_empty and not value)
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            self.fail(f"{prefix}{key}", f"must be {what}, got {value!r}")
        return value

    def per_split(self, mapping: dict, key: str, prefix: str = "", minimum: int = 1) -> dict[str, int]:
        counts = self.section(mapping, key, prefix)
        name = f"{prefix}{key}."
        extra = sorted(set(counts) - set(SPLITS))
        if extra:
            self.fail(f"{prefix}{key}", f"unknown split(s) {extra}; allowed: {', '.join(SPLITS)}")
        return {split: self.integer(counts, split, name, minimum=minimum) for split in SPLITS}

    def string_list(self, mapping: dict, key: str, prefix: str = "", allowed=None) -> list[str]:
        value = self.value(mapping, key, prefix)
        name = f"{prefix}{key}"
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.fail(name, f"must be a non-empty list of names, got {value!r}")
        if len(set(value)) != len(value):
            self.fail(name, f"contains duplicates: {value}")
        if allowed is not None:
            unknown = [v for v in value if v not in allowed]
            if unknown:
                self.fail(name, f"unknown value(s) {unknown}; allowed: {', '.join(allowed)}")
        return value


def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    """Read and validate ``path``; return the whole mapping (unchanged) if it is valid."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found (run from the repository root)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: must be a mapping of parameters")
    validate(params, source=str(path))
    return params


def validate(params: dict, source: str = "params.yaml") -> None:
    check = _Checker(source)
    unknown = unknown_keys(params, SCHEMA)
    if unknown:
        key, close = unknown[0]
        more = f" (and {len(unknown) - 1} more: {', '.join(k for k, _ in unknown[1:4])})" if len(unknown) > 1 else ""
        check.fail(key, "unknown key" + (f"; did you mean {close}?" if close else "") + more)
    check.integer(params, "seed", minimum=0)
    check.string_list(params, "tasks", allowed=TASKS)
    delays = check.integer_list(params, "delays", what="a non-empty list of integers (chunks of 8 ms)", non_empty=True)
    if any(d < 0 for d in delays):
        check.fail("delays", f"delays are counted in 8 ms chunks and must be >= 0, got {delays}")
    if len(set(delays)) != len(delays):
        check.fail("delays", f"contains duplicates: {delays}")
    delay = check.integer(params, "delay")
    if delay < 0:
        check.fail("delay", f"must be >= 0 (chunks of 8 ms), got {delay}")
    if delay not in delays:
        wanted = sorted(set(delays) | {delay})
        check.fail("delay", f"{delay} is not one of delays {delays}; boosted pairs are trained only for "
                            f"listed delays. Add it, e.g. dvc exp run -S 'delays={wanted}' -S delay={delay}")

    profiles = check.section(params, "profiles")
    check.choice(params, "profile", sorted(profiles))
    measured_sets = sorted(check.section(check.section(params, "real"), "responses", "real."))
    for name, profile in profiles.items():
        _validate_profile(check, profile, f"profiles.{name}.", measured_sets)
    model = check.section(params, "model")
    compression = check.choice(model, "compression", COMPRESSIONS, "model.")
    check.choice(model, "merge_start", MERGE_STARTS, "model.")
    _validate_train(check, check.section(params, "train"))
    _validate_ablation(check, check.section(params, "ablation"), delays, compression)
    if params["ablation"]["compressions"] and "ss" not in params["tasks"]:
        check.fail("ablation.compressions", f"the compression ablation trains SS pairs, but tasks {params['tasks']} "
                                            f"has no ss; add ss to tasks or set ablation.compressions: []")
    _validate_beyond(check, params, delays, delay)
    _validate_data(check, check.section(params, "data"))
    _validate_embedded(check, check.section(params, "embedded"))
    _validate_real(check, check.section(params, "real"))


def _validate_train(check: _Checker, train: dict) -> None:
    p = "train."
    for key in ("lr_factor", "min_lr", "clip_norm"):
        check.number(train, key, p, positive=True)
    if train["lr_factor"] >= 1:
        check.fail("train.lr_factor", f"must be below 1 (the learning rate is multiplied by it), got {train['lr_factor']}")
    check.integer(train, "lr_patience", p, minimum=0)
    if not isinstance(check.value(train, "mixed_precision", p), bool):
        check.fail("train.mixed_precision", f"must be true or false, got {train['mixed_precision']!r}")
    check.choice(train, "cpu_lstm", ("fast", "torch"), p)


def _validate_ablation(check: _Checker, ablation: dict, delays: list, compression: int) -> None:
    values = check.value(ablation, "compressions", "ablation.")
    if not isinstance(values, list) or any(v not in COMPRESSIONS for v in values) or len(set(values)) != len(values):
        check.fail("ablation.compressions", f"must be a list of distinct factors from {list(COMPRESSIONS)}, got {values!r}")
    if compression in values:
        check.fail("ablation.compressions", f"P = {compression} is model.compression, which the main boosted runs "
                                            f"already train; list only the other factors")
    ablation_delays = check.integer_list(ablation, "delays", "ablation.", what="a list of delays in chunks")
    missing = [d for d in ablation_delays if d not in delays]
    if missing:
        check.fail("ablation.delays", f"{missing} not in delays {delays}: the ablation compares against the main "
                                      f"runs at the same delay; add them to delays too")


def _validate_beyond(check: _Checker, params: dict, delays: list, delay: int) -> None:
    """The three studies beyond the paper: variable_delay, link, hint_cost."""
    low, high = check.range(check.section(params, "variable_delay"), "range", "variable_delay.")
    if low < 0 or low != int(low) or high != int(high):
        check.fail("variable_delay.range", f"must be whole chunks >= 0, got {params['variable_delay']['range']}")
    if not low <= delay <= high:
        check.fail("variable_delay.range", f"must contain the headline delay {delay} (the link study's base delay)")
    link = check.section(params, "link")
    p = "link."
    rates = check.value(link, "loss_rates", p)
    if (not isinstance(rates, list) or not rates or any(isinstance(r, bool) or not isinstance(r, (int, float))
                                                          or not 0 <= r < 1 for r in rates)):
        check.fail("link.loss_rates", f"must be a non-empty list of shares in [0, 1), got {rates!r}")
    check.number(link, "burst_chunks", p, positive=True)
    if link["burst_chunks"] < 1:
        check.fail("link.burst_chunks", f"a burst is at least one hint long, got {link['burst_chunks']}")
    jitters = check.integer_list(link, "jitter_chunks", p, what="a non-empty list of whole chunks >= 0", non_empty=True)
    if any(j < 0 for j in jitters):
        check.fail("link.jitter_chunks", f"must be >= 0 chunks, got {jitters}")
    check.choice(link, "jitter", LINK_JITTERS, p)
    check.choice(link, "policy", LINK_POLICIES, p)
    max_age = check.integer(link, "max_age", p, minimum=0)
    if max_age < high:
        check.fail("link.max_age", f"must be >= variable_delay.range's high end {int(high)}: the device keeps "
                                   f"hints at least that old")
    check.optional_integer(link, "test_mixtures", p, minimum=1)
    check.string_list(check.section(params, "hint_cost"), "codecs", "hint_cost.", allowed=HINT_CODECS)


def _validate_data(check: _Checker, data: dict) -> None:
    p = "data."
    rate = check.integer(data, "sample_rate", p)
    if rate != 16000:
        check.fail("data.sample_rate", f"must be 16000 (the models' 8 ms chunk is {CHUNK_SAMPLES} samples), got {rate}")
    check.range(data, "level_dbfs", p)
    limit = check.number(data, "peak_limit", p, positive=True)
    if limit >= 1.0:
        check.fail("data.peak_limit", f"must be below 1.0 (16-bit full scale), got {limit}")
    se = check.section(data, "se", p)
    check.range(se, "snr_db", "data.se.")
    ss = check.section(data, "ss", p)
    check.range(ss, "level_diff_db", "data.ss.")
    check.range(ss, "noise_snr_db", "data.ss.")
    check.number(ss, "min_separation_deg", "data.ss.")
    tse = check.section(data, "tse", p)
    check.range(tse, "sir_db", "data.tse.")
    check.range(tse, "noise_snr_db", "data.tse.")
    check.number(tse, "min_separation_deg", "data.tse.")
    check.choice(data, "embedding_model", ["resemblyzer"], p)


def _validate_embedded(check: _Checker, embedded: dict) -> None:
    speech = check.section(embedded, "speech", "embedded.")
    check.string_list(speech, "voices", "embedded.speech.")
    check.range(speech, "pitch_range", "embedded.speech.")
    check.range(speech, "rate_range", "embedded.speech.")
    check.integer(speech, "sentences_per_utterance", "embedded.speech.", minimum=1)
    noise = check.section(embedded, "noise", "embedded.")
    check.number(noise, "seconds", "embedded.noise.", positive=True)
    check.string_list(noise, "kinds", "embedded.noise.",
                      allowed=("coloured", "speech_shaped", "babble", "nonstationary"))
    check.range(noise, "coherence_range", "embedded.noise.")
    rooms = check.section(embedded, "rooms", "embedded.")
    check.range(rooms, "rt60_range", "embedded.rooms.")
    check.range(rooms, "distance_range", "embedded.rooms.")
    check.integer(rooms, "max_order", "embedded.rooms.", minimum=0)
    check.number(rooms, "response_seconds", "embedded.rooms.", positive=True)


def _validate_real(check: _Checker, real: dict) -> None:
    check.value(real, "downloads_dir", "real.")
    libri = check.section(real, "librispeech", "real.")
    check.value(libri, "mirror", "real.librispeech.")
    subsets = check.section(libri, "subsets", "real.librispeech.")
    md5 = check.section(libri, "md5", "real.librispeech.")
    for split in SPLITS:
        subset = check.value(subsets, split, "real.librispeech.subsets.")
        if subset not in md5:
            check.fail(f"real.librispeech.md5.{subset}", "missing checksum for a subset in use")


def _validate_profile(check: _Checker, profile: dict, prefix: str, measured_sets: list[str]) -> None:
    if not isinstance(profile, dict):
        check.fail(prefix[:-1], "must be a mapping")
    models = check.section(profile, "models", prefix)
    for role in MODEL_ROLES:
        size = check.section(models, role, f"{prefix}models.")
        where = f"{prefix}models.{role}."
        for key in ("emb_dim", "hidden", "blocks"):
            check.integer(size, key, where, minimum=1)
        if size.get("heads", 0):
            heads = check.integer(size, "heads", where, minimum=1)
            if size["emb_dim"] % heads:
                check.fail(f"{where}heads", f"emb_dim {size['emb_dim']} must be divisible by heads {heads}")
        if "window" in size:
            check.integer(size, "window", where, minimum=1)
        unknown = sorted(set(size) - {"emb_dim", "hidden", "blocks", "heads", "window"})
        if unknown:
            check.fail(f"{prefix}models.{role}", f"unknown key(s) {unknown}; allowed: emb_dim, hidden, blocks, heads, window")
    if models["small"]["blocks"] < 2:
        check.fail(f"{prefix}models.small.blocks", "must be >= 2 (merge modules follow every block but the last)")
    data = check.section(profile, "data", prefix)
    p = f"{prefix}data."
    sources = check.section(data, "sources", p)
    for part, allowed in SOURCES.items():
        check.choice(sources, part, allowed, f"{p}sources.")
    # Embedded rooms provide two sets; measured sets are the entries of real.responses.
    allowed_sets = EMBEDDED_RESPONSE_SETS if sources["responses"] == "embedded" else measured_sets
    check.string_list(data, "response_sets", p, allowed=allowed_sets)
    clip = check.number(data, "clip_seconds", p, positive=True)
    if clip * 16000 < 4 * CHUNK_SAMPLES:
        check.fail(f"{p}clip_seconds", f"must give at least 4 chunks of 8 ms, got {clip} s")
    check.per_split(data, "mixtures", p)
    check.integer(data, "workers", p, minimum=1)
    emb = check.section(data, "embedded", p)
    pe = f"{p}embedded."
    check.per_split(emb, "speakers", pe, minimum=2)  # two talkers per SS/TSE mixture
    check.integer(emb, "utterances_per_speaker", pe, minimum=2)
    check.per_split(emb, "noise_clips", pe)
    check.per_split(emb, "rooms", pe)
    check.integer(emb, "directions_per_room", pe, minimum=2)
    check.per_split(emb, "anechoic_directions", pe, minimum=2)
    train = check.section(profile, "train", prefix)
    pt = f"{prefix}train."
    epochs = check.section(train, "epochs", pt)
    per_task = {}  # role -> task -> epochs
    for role in MODEL_ROLES + ("boosted",):
        if isinstance(epochs.get(role), dict):  # {se: N, ss: N, tse: N}: a budget per task
            given = epochs[role]
            if set(given) != set(TASKS):
                check.fail(f"{pt}epochs.{role}", f"a per-task mapping must name exactly {list(TASKS)}, "
                                                 f"got {sorted(given)}")
            per_task[role] = {t: check.integer(given, t, f"{pt}epochs.{role}.", minimum=1) for t in TASKS}
        else:
            value = check.integer(epochs, role, f"{pt}epochs.", minimum=1)
            per_task[role] = dict.fromkeys(TASKS, value)
    if check.choice(train, "boosted_init", BOOSTED_INITS, pt) == "small":
        # Fair budget: a warm-started boosted small model has also seen the vanilla small model's clips.
        for t in TASKS:
            small, boosted, medium = (per_task[r][t] for r in ("small", "boosted", "medium"))
            if medium != small + boosted:
                check.fail(f"{pt}epochs.medium", f"must be small + boosted = {small + boosted} for {t} with "
                                                 f"boosted_init: small (the boosted small model has seen both), "
                                                 f"got {medium}")
    check.number(train, "lr", pt, positive=True)
    check.integer(train, "batch_size", pt, minimum=1)
    if check.value(train, "crop_seconds", pt) is not None:
        crop = check.number(train, "crop_seconds", pt, positive=True)
        if crop * 16000 < CHUNK_SAMPLES:
            check.fail(f"{pt}crop_seconds", f"must hold at least one 8 ms chunk, got {crop} s")
    for key in ("train_mixtures", "val_mixtures"):
        check.optional_integer(train, key, pt, minimum=1)
    check.integer(train, "threads", pt, minimum=0)
    processes = check.integer(train, "processes", pt, minimum=1)
    if train["batch_size"] % processes:
        check.fail(f"{pt}batch_size", f"{train['batch_size']} must be divisible by processes ({processes}): "
                                      "it is the global batch, split evenly across processes")
    check.integer(train, "loader_workers", pt, minimum=0)
    ev = check.section(profile, "eval", prefix)
    pv = f"{prefix}eval."
    check.optional_integer(ev, "test_mixtures", pv, minimum=1)
    check.integer(ev, "batch_size", pv, minimum=1)
    check.integer(ev, "workers", pv, minimum=1)
    check.integer(ev, "threads", pv, minimum=0)
    check.choice(ev, "engine", ("compiled", "torch"), pv)


def active_profile(params: dict) -> dict:
    """The ``profiles.<profile>`` section selected by ``profile``."""
    return params["profiles"][params["profile"]]


if __name__ == "__main__":  # python -m kboost.params [params.yaml]: check a parameter file
    import sys

    from .stage import exit_on_user_error

    with exit_on_user_error():
        checked = sys.argv[1] if len(sys.argv) > 1 else "params.yaml"
        load_params(checked)
        print(f"{checked}: valid")
