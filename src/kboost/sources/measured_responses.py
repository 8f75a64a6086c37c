"""Converters from downloaded, extracted binaural response sets to the ``responses`` layout.

The paper draws binaural responses from CIPIC HRTFs, the IoSR-Surrey RealRoomBRIRs, the
ASH-Listening-Set and CATT RIRs. Downloading and extracting is done elsewhere
(``kboost.download``); this module only turns files that are already on disk into
``<set>/<split>/<response_id>.wav`` (2 channels, 16 kHz, float) plus ``index.csv`` (see
:mod:`kboost.sources.layout`).

Public API
----------
``read_sofa(path, receivers=2) -> SofaResponses``
    Any SOFA file whose ``Data.IR`` is ``[M, R, N]`` (SimpleFreeFieldHRIR, SingleRoomDRIR,
    GeneralFIR, MultiSpeakerBRIR with one emitter). Directions are returned in the SOFA
    spherical convention *relative to the listener*: the source position (spherical or
    cartesian) minus ``ListenerPosition``, expressed in the frame given by ``ListenerView``
    (front) and ``ListenerUp`` (up); azimuth counter-clockwise from the front (90 = left),
    elevation above the horizontal plane. ``Data.Delay`` is applied as an integer shift.
``convert_sofa(sofa_path, set_name, room_id, split, out_dir, ...) -> list[dict]``
    Writes the measurements within ``elevation_limit_deg`` of the horizontal plane.
``parse_direction(name, pattern, ...) -> dict`` / ``collect_wav_brirs(root, ...) -> list[dict]``
    Small file-name parsers for sets that ship plain WAV BRIRs (ASH, CATT). The regular
    expression is a parameter because the exact naming has to be checked against the real
    archives; named groups ``azimuth`` (required), ``elevation``, ``distance`` and ``room``
    are understood. ``azimuth_clockwise`` / ``azimuth_offset_deg`` map the set's azimuth
    convention onto SOFA's.
``convert_wav_brirs(items, set_name, out_dir, ...) -> list[dict]``
    Converts such WAVs (each a 2-channel BRIR, left then right).
``build(out_dir, sets_cfg, extracted_roots, workers=1) -> pandas.DataFrame``
    Assembles several sets, assigns rooms/subjects to splits and writes ``index.csv`` and
    ``source.json``.
``normalise_response(ir) -> ir``
    The normalisation shared with :mod:`kboost.sources.embedded_rooms`.

Normalisation: every response is scaled by one gain for both ears so that its largest
absolute sample is 1.0 (for head-related and most room responses this is the direct-path
peak of the ear nearer the source). Interaural level and time differences are preserved.

``build`` configuration (one entry per set; keys not listed are errors)::

    cipic:                                # set name, written to the ``set`` column
      format: sofa                        # sofa | wav
      root: cipic                         # key of extracted_roots (default: the set name)
      glob: "**/*.sofa"                   # files under the root, sorted
      room_pattern: "subject_(?P<room>\\d+)"  # regex searched in the path relative to root;
                                          # group "room" gives room_id (default: file stem);
                                          # numeric ids get a leading "r" (room_key: 003 -> r003),
                                          # also in split lists, which may name either form
      elevation_limit_deg: 10             # keep |elevation| <= limit
      max_seconds: 0.5                    # truncate responses (null: keep full length)
      split: {method: hash, val: 0.1, test: 0.1, salt: kboost}  # or
      # split: {method: lists, train: [...], val: [...], test: [...], unlisted: error|drop|train}
      azimuth_bins: {width_deg: 5, pattern: [train, train, val, train, train, test]}  # optional:
                                          # also keep only directions whose azimuth bin belongs
                                          # to the row's split (directions disjoint across splits)
      # wav sets only:
      name_pattern: "az(?P<azimuth>-?\\d+)" # regex searched in the file name
      azimuth_clockwise: false            # the set counts azimuth clockwise (90 = right)
      azimuth_offset_deg: 0               # added after the sign change
      elevation_deg: 0                    # used when the name has no elevation group
      distance_m: 1.0                     # used when the name has no distance group
      check_sides: true                   # after conversion, require that sources at azimuth
                                          # 45..135 are louder in the left ear and 225..315 in
                                          # the right (median over responses); catches a wrong
                                          # azimuth_clockwise / channel order
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from ..audio import AudioError, check_signal, resample_audio, write_audio
from ..errors import KboostError
from ..fsutil import write_json
from ..parallel import map_ordered
from . import layout

_ID_OK = re.compile(r"^[A-Za-z0-9_.\-]+$")


class SofaError(KboostError, ValueError):
    """A SOFA file that cannot be converted (unreadable, wrong shape, NaN...)."""


# --------------------------------------------------------------------------- shared helpers
def normalise_response(ir: np.ndarray) -> np.ndarray:
    """Scale ``[2, N]`` so its largest absolute sample (both ears, one gain) is 1.0."""
    ir = np.asarray(ir, dtype=np.float64)
    peak = float(np.max(np.abs(ir)))
    if not np.isfinite(peak) or peak <= 0.0:
        raise AudioError("response is silent or not finite; cannot normalise")
    return (ir / peak).astype(np.float32)


def direction_split(azimuth_deg: float, width_deg: float, pattern: list[str]) -> str:
    """Split owning ``azimuth_deg``: bins of ``width_deg`` centred on multiples of the width
    (bin k covers [k*w - w/2, k*w + w/2)), assigned to splits by cycling through ``pattern``."""
    k = int(math.floor((float(azimuth_deg) % 360.0) / width_deg + 0.5)) % int(round(360.0 / width_deg))
    return pattern[k % len(pattern)]


def safe_id(text: str) -> str:
    """``text`` with characters outside ``[A-Za-z0-9_.-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(text))


_NUMERIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def room_key(text: str) -> str:
    """A room id that survives ``index.csv``: characters sanitised as :func:`safe_id`, and ids
    that look like numbers get a leading ``r`` ("003" -> "r003"), because pandas would read
    them back as numbers and lose leading zeros."""
    key = safe_id(text)
    return f"r{key}" if _NUMERIC.match(key) else key


def _check_id(label: str, value: str) -> None:
    if not _ID_OK.match(str(value)):
        raise ValueError(f"{label} {value!r} may only contain letters, digits, '_', '.', '-'")
    if _NUMERIC.match(str(value)):
        raise ValueError(f"{label} {value!r} looks like a number and would not survive index.csv; "
                         f"use room_key() (gives {room_key(value)!r})")


def write_response(path: str | os.PathLike, audio: np.ndarray) -> None:
    """Write a non-silent ``[2, N]`` response as a 16 kHz float WAV (atomic, reproducible)."""
    audio = np.asarray(audio, dtype=np.float32)
    check_signal(audio, str(path))
    write_audio(path, audio, layout.SAMPLE_RATE, subtype="FLOAT")


# --------------------------------------------------------------------------- SOFA reading
@dataclass
class SofaResponses:
    path: Path
    ir: np.ndarray              # [M, R, N] float64
    sample_rate: int
    azimuth_deg: np.ndarray     # [M], SOFA convention, relative to the listener, in [0, 360)
    elevation_deg: np.ndarray   # [M]
    distance_m: np.ndarray      # [M]
    convention: str


def _var(ds, name):
    return ds.variables[name] if name in ds.variables else None


def _values(var) -> np.ndarray:
    return np.ma.filled(np.ma.asarray(var[:], dtype=np.float64), np.nan)


def _cartesian(ds, name: str, m: int, default, path: Path, kind: str) -> np.ndarray:
    """Variable ``name`` as ``[M, 3]`` cartesian. ``kind``: 'point' (metres) or 'vector'."""
    var = _var(ds, name)
    if var is None:
        return np.tile(np.asarray(default, dtype=np.float64), (m, 1))
    vals = _values(var)
    if vals.ndim == 3:  # e.g. [R, C, I] for receivers; not used for points of the listener
        vals = vals[..., 0]
    if vals.ndim == 1:
        vals = vals[None]
    if vals.shape[-1] != 3 or vals.shape[0] not in (1, m):
        raise SofaError(f"{path}: {name} has shape {vals.shape}, expected [1 or {m}, 3]")
    if not np.all(np.isfinite(vals)):
        raise SofaError(f"{path}: {name} contains NaN")
    ptype = str(getattr(var, "Type", "cartesian")).strip().lower()
    units = [u.strip().lower() for u in str(getattr(var, "Units", "")).split(",")]
    if ptype == "spherical":
        ang = np.deg2rad(vals[:, :2]) if not any(u.startswith("rad") for u in units[:2]) else vals[:, :2]
        r = vals[:, 2]
        if kind == "vector":
            r = np.ones_like(r)
        vals = np.stack([
            r * np.cos(ang[:, 1]) * np.cos(ang[:, 0]),
            r * np.cos(ang[:, 1]) * np.sin(ang[:, 0]),
            r * np.sin(ang[:, 1]),
        ], axis=1)
    elif ptype != "cartesian":
        raise SofaError(f"{path}: {name} has unknown Type {ptype!r}")
    return np.broadcast_to(vals, (m, 3)).astype(np.float64)


def read_sofa(path: str | os.PathLike, receivers: int = 2) -> SofaResponses:
    """Read a SOFA file's impulse responses and listener-relative directions (see module doc).

    Raises :class:`SofaError` naming the file when it is unreadable, lacks a variable, has a
    receiver count other than ``receivers``, or contains NaN.
    """
    import netCDF4

    path = Path(path)
    try:
        ds = netCDF4.Dataset(str(path), "r")
    except Exception as exc:  # netCDF4 raises OSError / RuntimeError for non-netCDF files
        raise SofaError(f"{path}: cannot read SOFA file ({exc})") from exc
    try:
        ds.set_auto_mask(False)
        convention = str(getattr(ds, "SOFAConventions", "unknown"))
        for name in ("Data.IR", "Data.SamplingRate", "SourcePosition"):
            if name not in ds.variables:
                raise SofaError(f"{path}: not a SOFA impulse-response file (no {name})")
        ir = np.asarray(ds.variables["Data.IR"][:], dtype=np.float64)
        if ir.ndim == 4 and ir.shape[2] == 1:  # MultiSpeakerBRIR [M, R, E, N] with one emitter
            ir = ir[:, :, 0, :]
        if ir.ndim != 3:
            raise SofaError(f"{path}: Data.IR has shape {ir.shape}, expected [M, R, N]")
        m, r, n = ir.shape
        if r != receivers:
            raise SofaError(f"{path}: expected {receivers} receivers (left, right), found {r}")
        if m == 0 or n == 0:
            raise SofaError(f"{path}: Data.IR is empty")
        if not np.all(np.isfinite(ir)):
            raise SofaError(f"{path}: Data.IR contains NaN or infinite values")
        rate = np.asarray(ds.variables["Data.SamplingRate"][:], dtype=np.float64).ravel()
        if rate.size == 0 or not np.all(rate == rate[0]) or not np.isfinite(rate[0]) or rate[0] <= 0:
            raise SofaError(f"{path}: Data.SamplingRate must be one positive value, found {rate}")
        if rate[0] != round(rate[0]):
            raise SofaError(f"{path}: non-integer sampling rate {rate[0]}")
        units = str(getattr(ds.variables["Data.SamplingRate"], "Units", "hertz")).lower()
        if units not in ("hertz", "hz"):
            raise SofaError(f"{path}: Data.SamplingRate units {units!r}, expected hertz")
        delay_var = _var(ds, "Data.Delay")
        if delay_var is not None:
            delay = np.asarray(delay_var[:], dtype=np.float64)
            if not np.all(np.isfinite(delay)):
                raise SofaError(f"{path}: Data.Delay contains NaN")
            if np.any(delay != 0):
                delay = np.broadcast_to(np.round(delay).astype(int).reshape(-1, r)[:, :r], (m, r))
                if delay.min() < 0:
                    raise SofaError(f"{path}: negative Data.Delay")
                shifted = np.zeros((m, r, n + int(delay.max())))
                for i in range(m):
                    for j in range(r):
                        shifted[i, j, delay[i, j]:delay[i, j] + n] = ir[i, j]
                ir = shifted
        source = _cartesian(ds, "SourcePosition", m, (1.0, 0.0, 0.0), path, "point")
        listener = _cartesian(ds, "ListenerPosition", m, (0.0, 0.0, 0.0), path, "point")
        view = _cartesian(ds, "ListenerView", m, (1.0, 0.0, 0.0), path, "vector")
        up = _cartesian(ds, "ListenerUp", m, (0.0, 0.0, 1.0), path, "vector")
    finally:
        ds.close()
    rel = source - listener
    front = view / np.linalg.norm(view, axis=1, keepdims=True)
    up = up - np.sum(up * front, axis=1, keepdims=True) * front
    norm_up = np.linalg.norm(up, axis=1, keepdims=True)
    if np.any(norm_up < 1e-9):
        raise SofaError(f"{path}: ListenerUp is parallel to ListenerView")
    up = up / norm_up
    left = np.cross(up, front)
    x, y, z = (np.sum(rel * a, axis=1) for a in (front, left, up))
    distance = np.sqrt(x * x + y * y + z * z)
    azimuth = np.round(np.degrees(np.arctan2(y, x)), 6) % 360.0
    elevation = np.round(np.degrees(np.arctan2(z, np.hypot(x, y))), 6)
    return SofaResponses(path, ir, int(rate[0]), azimuth, elevation, distance, convention)


# --------------------------------------------------------------------------- conversion
def _finish(ir: np.ndarray, rate: int, max_seconds: float | None, name: str) -> np.ndarray:
    """Resample ``[2, N]`` to 16 kHz, truncate, normalise; errors name ``name``."""
    out = resample_audio(np.asarray(ir, dtype=np.float64), rate, layout.SAMPLE_RATE)
    if max_seconds is not None:
        out = out[:, : max(1, int(round(max_seconds * layout.SAMPLE_RATE)))]
    check_signal(out, name)
    return normalise_response(out)


def convert_sofa(
    sofa_path: str | os.PathLike,
    set_name: str,
    room_id: str,
    split: str,
    out_dir: str | os.PathLike,
    elevation_limit_deg: float = 10.0,
    max_seconds: float | None = None,
    keep=None,
) -> list[dict]:
    """Write the measurements of one SOFA file (one room or subject) and return index rows.

    ``keep(azimuth_deg, elevation_deg) -> bool`` optionally filters directions further.
    Files go to ``out_dir/<set_name>/<split>/<set_name>-<room_id>-m<index>.wav``.
    """
    if split not in layout.SPLITS:
        raise ValueError(f"split must be one of {layout.SPLITS}, got {split!r}")
    _check_id("set_name", set_name)
    _check_id("room_id", room_id)
    data = read_sofa(sofa_path)
    out_dir = Path(out_dir)
    rows = []
    for i in range(data.ir.shape[0]):
        az, el = float(data.azimuth_deg[i]), float(data.elevation_deg[i])
        if abs(el) > elevation_limit_deg + 1e-9:
            continue
        if keep is not None and not keep(az, el):
            continue
        rid = f"{set_name}-{room_id}-m{i:05d}"
        rel = f"{set_name}/{split}/{rid}.wav"
        audio = _finish(data.ir[i], data.sample_rate, max_seconds, f"{data.path} measurement {i}")
        write_response(out_dir / rel, audio)
        rows.append(dict(response_id=rid, split=split, set=set_name, room_id=str(room_id),
                         azimuth_deg=round(az, 4), elevation_deg=round(el, 4),
                         distance_m=round(float(data.distance_m[i]), 4), path=rel))
    return rows


def to_sofa_azimuth(azimuth_deg: float, clockwise: bool = False, offset_deg: float = 0.0) -> float:
    """Map a set's azimuth onto SOFA's (counter-clockwise, 90 = left), in [0, 360)."""
    az = -float(azimuth_deg) if clockwise else float(azimuth_deg)
    return round((az + offset_deg) % 360.0, 6) % 360.0


def parse_direction(
    name: str,
    pattern: str,
    azimuth_clockwise: bool = False,
    azimuth_offset_deg: float = 0.0,
    elevation_deg: float = 0.0,
    distance_m: float = 1.0,
) -> dict:
    """Parse a direction from a file name with ``pattern`` (``re.search``).

    Named groups: ``azimuth`` (required), optional ``elevation``, ``distance`` (metres) and
    ``room``. Returns ``{azimuth_deg, elevation_deg, distance_m[, room_id]}`` with the azimuth
    in the SOFA convention. Raises ValueError naming the file when the pattern does not match.
    """
    match = re.search(pattern, name)
    if match is None or match.groupdict().get("azimuth") is None:
        raise ValueError(f"{name}: file name does not match pattern {pattern!r} (needs group 'azimuth')")
    groups = match.groupdict()
    out = {
        "azimuth_deg": to_sofa_azimuth(float(groups["azimuth"]), azimuth_clockwise, azimuth_offset_deg),
        "elevation_deg": float(groups["elevation"]) if groups.get("elevation") is not None else float(elevation_deg),
        "distance_m": float(groups["distance"]) if groups.get("distance") is not None else float(distance_m),
    }
    if groups.get("room") is not None:
        out["room_id"] = room_key(groups["room"])
    return out


def collect_wav_brirs(
    root: str | os.PathLike,
    glob: str,
    name_pattern: str,
    room_pattern: str | None = None,
    **direction_kwargs,
) -> list[dict]:
    """List WAV BRIRs under ``root`` with their metadata (``path, room_id, azimuth_deg, ...``).

    ``room_pattern`` is searched in the path relative to ``root`` (group ``room``); without it
    the ``room`` group of ``name_pattern`` or else the parent directory's name is the room.
    """
    root = Path(root)
    items = []
    for path in sorted(root.glob(glob)):
        if not path.is_file():
            continue
        meta = parse_direction(path.name, name_pattern, **direction_kwargs)
        if room_pattern is not None:
            meta["room_id"] = _room_from(path, root, room_pattern)
        meta.setdefault("room_id", room_key(path.parent.name))
        meta["path"] = path
        items.append(meta)
    return items


def _read_brir(path: Path, max_seconds: float | None) -> np.ndarray:
    try:
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as exc:
        raise AudioError(f"{path}: cannot read audio ({exc})") from exc
    if data.shape[1] != 2:
        raise AudioError(f"{path}: expected 2 channels (left, right), found {data.shape[1]}")
    return _finish(data.T, int(rate), max_seconds, str(path))


def convert_wav_brirs(
    items: list[dict],
    set_name: str,
    out_dir: str | os.PathLike,
    max_seconds: float | None = None,
) -> list[dict]:
    """Convert WAV BRIRs. Each item: ``path, room_id, split, azimuth_deg`` (SOFA convention),
    ``elevation_deg, distance_m``. Response id: ``<set>-<room>-<file stem>``."""
    out_dir = Path(out_dir)
    rows = []
    for item in items:
        path = Path(item["path"])
        split = item["split"]
        if split not in layout.SPLITS:
            raise ValueError(f"{path}: split must be one of {layout.SPLITS}, got {split!r}")
        room = str(item["room_id"])
        _check_id(f"{path}: room_id", room)
        rid = f"{safe_id(set_name)}-{room}-{safe_id(path.stem)}"
        rel = f"{safe_id(set_name)}/{split}/{rid}.wav"
        write_response(out_dir / rel, _read_brir(path, max_seconds))
        rows.append(dict(response_id=rid, split=split, set=set_name, room_id=room,
                         azimuth_deg=round(float(item["azimuth_deg"]), 4),
                         elevation_deg=round(float(item["elevation_deg"]), 4),
                         distance_m=round(float(item["distance_m"]), 4), path=rel))
    return rows


# --------------------------------------------------------------------------- build
_SET_KEYS = {
    "format", "root", "glob", "room_pattern", "elevation_limit_deg", "max_seconds", "split",
    "azimuth_bins", "name_pattern", "azimuth_clockwise", "azimuth_offset_deg", "elevation_deg",
    "distance_m", "check_sides",
}


def _room_from(path: Path, root: Path, pattern: str | None) -> str:
    rel = path.relative_to(root).as_posix()
    if pattern is None:
        return room_key(path.stem)
    match = re.search(pattern, rel)
    if match is None or match.groupdict().get("room") is None:
        raise ValueError(f"{path}: path does not match room_pattern {pattern!r} (needs group 'room')")
    return room_key(match.group("room"))


def hash_split(key: str, val: float, test: float, salt: str = "kboost") -> str:
    """Deterministic split from sha256(salt:key): test with probability ``test``, val ``val``."""
    u = int.from_bytes(hashlib.sha256(f"{salt}:{key}".encode()).digest()[:8], "big") / 2.0**64
    return "test" if u < test else "val" if u < test + val else "train"


def assign_splits(set_name: str, rooms: list[str], rule: dict) -> dict[str, str | None]:
    """Map each room to a split (or None = dropped) by ``rule`` (see module doc)."""
    where = f"measured set {set_name!r}: split"
    if not isinstance(rule, dict) or rule.get("method") not in ("hash", "lists"):
        raise ValueError(f"{where}: needs method 'hash' or 'lists', got {rule!r}")
    if rule["method"] == "hash":
        val, test = float(rule.get("val", 0.1)), float(rule.get("test", 0.1))
        if not (0 <= val and 0 <= test and val + test < 1):
            raise ValueError(f"{where}: val and test fractions must be >= 0 with sum < 1")
        salt = str(rule.get("salt", "kboost"))
        return {r: hash_split(f"{set_name}/{r}", val, test, salt) for r in rooms}
    listed = {}
    for split in layout.SPLITS:
        for r in rule.get(split, []) or []:
            r = room_key(r)
            if r in listed:
                raise ValueError(f"{where}: room {r!r} listed in {listed[r]} and {split}")
            listed[r] = split
    unknown = sorted(set(listed) - set(rooms))
    if unknown:
        raise ValueError(f"{where}: listed room(s) not found in the files: {unknown[:5]}")
    unlisted = rule.get("unlisted", "error")
    out = {}
    for r in rooms:
        if r in listed:
            out[r] = listed[r]
        elif unlisted == "error":
            raise ValueError(f"{where}: room {r!r} is in no list (set unlisted: drop|train|val|test)")
        elif unlisted == "drop":
            out[r] = None
        elif unlisted in layout.SPLITS:
            out[r] = unlisted
        else:
            raise ValueError(f"{where}: unlisted must be error, drop or a split, got {unlisted!r}")
    return out


class _BinKeep:
    """Picklable direction filter: keep azimuths whose bin belongs to ``split``."""

    def __init__(self, bins: dict | None, split: str):
        self.bins, self.split = bins, split

    def __call__(self, az: float, el: float = 0.0) -> bool:
        if not self.bins:
            return True
        return direction_split(az, float(self.bins["width_deg"]), list(self.bins["pattern"])) == self.split


def _job(job: tuple) -> list[dict]:
    kind, args, kwargs = job
    if kind == "sofa":
        return convert_sofa(*args, **kwargs)
    return convert_wav_brirs(*args, **kwargs)


def _plan(set_name: str, cfg: dict, roots: dict, out_dir: Path) -> list[tuple]:
    where = f"measured set {set_name!r}"
    unknown = sorted(set(cfg) - _SET_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}")
    fmt = cfg.get("format")
    if fmt not in ("sofa", "wav"):
        raise ValueError(f"{where}: format must be 'sofa' or 'wav', got {fmt!r}")
    root_key = cfg.get("root", set_name)
    if root_key not in roots:
        raise ValueError(f"{where}: root {root_key!r} not in extracted_roots {sorted(roots)}")
    root = Path(roots[root_key])
    if not root.is_dir():
        raise ValueError(f"{where}: extracted root {root} is not a directory")
    if "split" not in cfg:
        raise ValueError(f"{where}: missing key 'split'")
    bins = cfg.get("azimuth_bins")
    if bins is not None:
        if not isinstance(bins, dict) or float(bins.get("width_deg", 0)) <= 0 or not bins.get("pattern") \
                or set(bins["pattern"]) - set(layout.SPLITS):
            raise ValueError(f"{where}: azimuth_bins needs width_deg > 0 and a pattern of splits")
    max_seconds = cfg.get("max_seconds")
    jobs = []
    if fmt == "sofa":
        files = [p for p in sorted(root.glob(cfg.get("glob", "**/*.sofa"))) if p.is_file()]
        if not files:
            raise ValueError(f"{where}: no files match {cfg.get('glob', '**/*.sofa')!r} under {root}")
        rooms = [_room_from(p, root, cfg.get("room_pattern")) for p in files]
        if len(set(rooms)) != len(rooms):
            dup = next(r for r in rooms if rooms.count(r) > 1)
            raise ValueError(f"{where}: room id {dup!r} comes from more than one file; fix room_pattern")
        splits = assign_splits(set_name, rooms, cfg["split"])
        for path, room in zip(files, rooms):
            split = splits[room]
            if split is None:
                continue
            jobs.append(("sofa", (path, set_name, room, split, out_dir),
                         dict(elevation_limit_deg=float(cfg.get("elevation_limit_deg", 10.0)),
                              max_seconds=max_seconds, keep=_BinKeep(bins, split))))
        return jobs
    if "name_pattern" not in cfg:
        raise ValueError(f"{where}: wav sets need 'name_pattern'")
    items = collect_wav_brirs(
        root, cfg.get("glob", "**/*.wav"), cfg["name_pattern"], cfg.get("room_pattern"),
        azimuth_clockwise=bool(cfg.get("azimuth_clockwise", False)),
        azimuth_offset_deg=float(cfg.get("azimuth_offset_deg", 0.0)),
        elevation_deg=float(cfg.get("elevation_deg", 0.0)),
        distance_m=float(cfg.get("distance_m", 1.0)),
    )
    if not items:
        raise ValueError(f"{where}: no files match {cfg.get('glob', '**/*.wav')!r} under {root}")
    rooms = sorted({it["room_id"] for it in items})
    splits = assign_splits(set_name, rooms, cfg["split"])
    limit = float(cfg.get("elevation_limit_deg", 10.0))
    by_room: dict[str, list] = {}
    for it in items:
        split = splits[it["room_id"]]
        if split is None or abs(it["elevation_deg"]) > limit + 1e-9:
            continue
        if not _BinKeep(bins, split)(it["azimuth_deg"]):
            continue
        by_room.setdefault(it["room_id"], []).append(dict(it, split=split))
    for room in sorted(by_room):
        jobs.append(("wav", (by_room[room], set_name, out_dir), dict(max_seconds=max_seconds)))
    return jobs


def _ild_db(path: Path) -> float:
    audio, _ = sf.read(str(path), dtype="float64", always_2d=True)
    energy = np.sum(audio ** 2, axis=0) + 1e-20
    return float(10 * np.log10(energy[0] / energy[1]))


def check_sides(frame: pd.DataFrame, out_dir: str | os.PathLike, set_name: str) -> None:
    """Raise if the median interaural level difference contradicts the recorded azimuths."""
    rows = frame[frame["set"] == set_name]
    for lo, hi, sign, side in ((45, 135, 1, "left"), (225, 315, -1, "right")):
        sel = rows[(rows["azimuth_deg"] >= lo) & (rows["azimuth_deg"] <= hi)]
        if len(sel) == 0:
            continue
        ild = float(np.median([_ild_db(Path(out_dir) / p) for p in sel["path"]]))
        if sign * ild <= 0:
            raise ValueError(
                f"measured set {set_name!r}: sources recorded at azimuth {lo}..{hi} (SOFA: {side}) have "
                f"median left/right level difference {ild:+.1f} dB; the azimuth convention "
                f"(azimuth_clockwise / azimuth_offset_deg) or the channel order is wrong")


def build(
    out_dir: str | os.PathLike,
    sets_cfg: dict,
    extracted_roots: dict,
    workers: int = 1,
) -> pd.DataFrame:
    """Convert every set in ``sets_cfg`` into ``out_dir`` and write ``index.csv`` + ``source.json``.

    ``extracted_roots`` maps root keys (default: set names) to extracted directories.
    Output bytes do not depend on ``workers``.
    """
    out_dir = Path(out_dir)
    if not sets_cfg:
        raise ValueError("measured responses: sets_cfg is empty")
    jobs = []
    for set_name in sorted(sets_cfg):
        if not _ID_OK.match(set_name):
            raise ValueError(f"measured set name {set_name!r} may only contain letters, digits, '_', '.', '-'")
        jobs.extend(_plan(set_name, dict(sets_cfg[set_name]), dict(extracted_roots), out_dir))
    rows = [row for part in map_ordered(_job, jobs, workers, desc="measured responses", unit="file")
            for row in part]
    if not rows:
        raise ValueError("measured responses: no response survived the filters (elevation, azimuth bins, splits)")
    layout.write_index("responses", out_dir, rows)
    frame = layout.read_index("responses", out_dir)
    for set_name in sorted(sets_cfg):
        if sets_cfg[set_name].get("check_sides", True):
            check_sides(frame, out_dir, set_name)
    counts = {s: {sp: int(n) for sp, n in g.groupby("split").size().items()} for s, g in frame.groupby("set")}
    write_json(out_dir / "source.json", {
        "kind": "measured_responses",
        "sets_cfg": sets_cfg,
        "roots": {k: Path(v).name for k, v in sorted(extracted_roots.items())},
        "counts": counts,
        "normalisation": "peak of both ears = 1.0 (one gain per response)",
        "sample_rate": layout.SAMPLE_RATE,
    })
    return frame


# --------------------------------------------------------------------------- download + build
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


def set_urls(set_name: str, cfg: dict) -> list[str]:
    """The URLs of one set: ``files`` is a URL, or a template with ``{id}`` filled from ``ids``."""
    template = cfg.get("files")
    if not isinstance(template, str) or not template:
        raise ValueError(f"real.responses.{set_name}.files: missing URL (or URL template with {{id}})")
    if "{id}" not in template:
        return [template]
    ids = cfg.get("ids")
    if not ids:
        raise ValueError(f"real.responses.{set_name}.ids: the URL template needs a list of ids")
    return [template.format(id=i) for i in ids]


def prepare(out_dir, cfg: dict, downloads_dir, response_sets: list[str], workers: int = 1,
            progress: bool = True) -> None:
    """Download (checksummed, resumable), extract and convert the measured sets ``response_sets``.

    ``cfg`` is ``real.responses`` of params.yaml: per set, ``files`` (+ ``ids``), optional
    ``checksums`` {file name: "md5:..."/"sha256:..."} and the ``convert`` cfg of :func:`build`.
    Downloads stay in ``<downloads_dir>/responses/<set>/`` so reruns resume and skip.
    """
    from urllib.parse import urlparse

    from ..download import extract_once, fetch, fetch_options

    unknown = [s for s in response_sets if s not in cfg]
    if unknown:
        raise ValueError(f"real.responses: no entry for response set(s) {unknown} named in "
                         f"profiles.*.data.response_sets; known: {sorted(cfg)}")
    roots, sets_cfg = {}, {}
    for set_name in response_sets:
        scfg = cfg[set_name]
        if "convert" not in scfg:
            raise ValueError(f"real.responses.{set_name}.convert: missing (how to read the files)")
        root = Path(downloads_dir) / "responses" / set_name
        checksums = scfg.get("checksums") or {}
        for url in set_urls(set_name, scfg):
            name = Path(urlparse(url).path).name
            local = fetch(url, root / "files" / name, checksums.get(name), progress=progress,
                          **fetch_options(scfg, downloads_dir))
            if name.lower().endswith(ARCHIVE_SUFFIXES):
                extract_once(local, root / "extracted" / name.split(".")[0])
        roots[set_name] = root
        sets_cfg[set_name] = scfg["convert"]
    build(out_dir, sets_cfg, roots, workers=workers)
