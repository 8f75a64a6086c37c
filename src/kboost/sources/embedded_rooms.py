"""Embedded (offline) binaural responses: simulated rooms and anechoic KEMAR HRIRs.

``generate(out_dir, cfg, seed, workers=1)`` writes the ``responses`` corpus part (see
:mod:`kboost.sources.layout`) into the existing, empty ``out_dir``: 2-channel 16 kHz float
WAVs at ``<set>/<split>/<response_id>.wav``, ``index.csv`` and ``source.json``. The only data
used is the MIT KEMAR SOFA file shipped in ``kboost/assets`` (see MIT_KEMAR_ATTRIBUTION.md).

Sets
----
``simulated_room``
    pyroomacoustics shoebox rooms (image-source method, frequency-flat energy absorption
    from Sabine's formula for a drawn RT60). The receiver is the KEMAR head: both ears'
    HRIRs (resampled to 16 kHz) are the directivities of two microphones placed *at the head
    centre*, because the HRIRs already carry the interaural delay. The head stands upright at
    a random position with a random yaw; each source is placed at a head-relative direction
    and distance, so the recorded azimuth/elevation are relative to the head (SOFA
    convention, 90 = left). HRIRs are looked up by nearest measured direction (no
    interpolation). ``room_id``: ``<split>-room<k>``.
``anechoic_hrtf``
    The KEMAR HRIRs themselves (distance 1.4 m), resampled to 16 kHz. ``room_id``:
    ``anechoic-<split>`` (one pseudo-room per split).

Splits: rooms are simulated per split, so rooms never cross splits. Directions are disjoint
across splits too: the azimuth circle is cut into bins of ``azimuth_bin_deg`` centred on
multiples of the width (bin k covers [k*w - w/2, k*w + w/2)), and bins are assigned to
splits by cycling through ``azimuth_bin_pattern``. With the 5-degree default this matches
KEMAR's 5-degree grid at elevations -10, 0 and 10, so even the nearest measured HRIR of a
direct path belongs to one split only. Elevations are limited to ``elevation_limit_deg``.

Normalisation: each response is scaled by one gain for both ears so that its largest
absolute sample is 1.0 (the direct-path peak of the nearer ear for these responses);
interaural differences are preserved. Responses longer than ``response_seconds`` are
truncated (no padding; anechoic HRIRs are 186 samples).

Determinism: every room draws from its own generator seeded by (seed, split, room index),
so the bytes written do not depend on ``workers`` or on scheduling.

cfg keys (required unless a default is given)
---------------------------------------------
rooms: {train, val, test}            simulated rooms per split (ints >= 0)
directions_per_room: int             sources simulated per room (>= 1)
room_size_range: [[x,y,z], [x,y,z]]  min and max shoebox dimensions, metres
rt60_range: [lo, hi]                 target reverberation time, seconds (redrawn if infeasible)
distance_range: [lo, hi]             source distance from the head centre, metres
max_order: int                       image-source order (>= 0)
anechoic_directions: {train, val, test}  KEMAR directions per split (ints >= 0)
response_seconds: float              responses truncated to this length
elevation_limit_deg: 10              |elevation| limit for both sets
azimuth_bin_deg: 5                   width of the azimuth bins that are assigned to splits
azimuth_bin_pattern: [train, train, val, train, train, test]  split of bin k = pattern[k % len]
head_height_range: [1.2, 1.8]        height of the head centre, metres
wall_margin_m: 0.5                   minimum distance of head and sources from any wall
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


from ..fsutil import file_digest, write_json
from ..parallel import map_ordered
from ..params import EMBEDDED_RESPONSE_SETS
from . import layout
from .measured_responses import direction_split, normalise_response, read_sofa, write_response

SOFA_PATH = Path(__file__).resolve().parent.parent / "assets" / "MIT_KEMAR_normal_pinna.sofa"
ATTRIBUTION = (
    "MIT KEMAR HRTF (normal pinna), Copyright 1994 by the MIT Media Laboratory, free to use "
    "with citation: W. G. Gardner and K. D. Martin, 'HRTF Measurements of a KEMAR Dummy-Head "
    "Microphone', MIT Media Lab Perceptual Computing Technical Report #280, 1994. File from the "
    "Debian libmysofa1 package (share/libmysofa/MIT_KEMAR_normal_pinna.sofa)."
)
SETS = EMBEDDED_RESPONSE_SETS  # defined with the params schema, which checks profile choices

DEFAULTS = {
    "elevation_limit_deg": 10.0,
    "azimuth_bin_deg": 5.0,
    "azimuth_bin_pattern": ["train", "train", "val", "train", "train", "test"],
    "head_height_range": [1.2, 1.8],
    "wall_margin_m": 0.5,
}
REQUIRED = (
    "rooms", "directions_per_room", "room_size_range", "rt60_range", "distance_range",
    "max_order", "anechoic_directions", "response_seconds",
)
_MAX_TRIES = 1000


# --------------------------------------------------------------------------- configuration
def _err(key: str, msg: str) -> ValueError:
    return ValueError(f"embedded.rooms.{key} {msg}")


def _number(cfg, key, lo=None, integer=False, positive=False):
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise _err(key, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value) or (lo is not None and value < lo) or (positive and value <= 0):
        raise _err(key, f"must be {'> 0' if positive else f'>= {lo}'}, got {value!r}")
    return value


def _range(cfg, key, positive=True, allow_equal=True):
    value = cfg[key]
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise _err(key, f"must be [lo, hi] numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if lo > hi or (positive and lo <= 0):
        raise _err(key, f"needs {'0 < ' if positive else ''}lo <= hi, got {value!r}")
    return [lo, hi]


def _per_split(cfg, key):
    value = cfg[key]
    if not isinstance(value, dict) or set(value) != set(layout.SPLITS):
        raise _err(key, f"must map exactly {list(layout.SPLITS)} to counts, got {value!r}")
    for split in layout.SPLITS:
        v = value[split]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _err(key, f"[{split}] must be an integer >= 0, got {v!r}")
    return {s: int(value[s]) for s in layout.SPLITS}


def validate_cfg(cfg: dict) -> dict:
    """Return the cfg with defaults filled in; ValueError naming the key on any problem."""
    if not isinstance(cfg, dict):
        raise ValueError(f"embedded_rooms cfg must be a mapping, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(REQUIRED) - set(DEFAULTS))
    if unknown:
        raise _err(unknown[0], f"is not a known key (known: {sorted(REQUIRED + tuple(DEFAULTS))})")
    for key in REQUIRED:
        if key not in cfg:
            raise _err(key, "is missing")
    c = {**DEFAULTS, **cfg}
    out = {
        "rooms": _per_split(c, "rooms"),
        "anechoic_directions": _per_split(c, "anechoic_directions"),
        "directions_per_room": _number(c, "directions_per_room", lo=1, integer=True),
        "max_order": _number(c, "max_order", lo=0, integer=True),
        "response_seconds": float(_number(c, "response_seconds", positive=True)),
        "rt60_range": _range(c, "rt60_range"),
        "distance_range": _range(c, "distance_range"),
        "head_height_range": _range(c, "head_height_range"),
        "elevation_limit_deg": float(_number(c, "elevation_limit_deg", lo=0)),
        "azimuth_bin_deg": float(_number(c, "azimuth_bin_deg", positive=True)),
        "wall_margin_m": float(_number(c, "wall_margin_m", lo=0)),
    }
    if out["elevation_limit_deg"] > 90:
        raise _err("elevation_limit_deg", "must be <= 90")
    n_bins = 360.0 / out["azimuth_bin_deg"]
    if abs(n_bins - round(n_bins)) > 1e-9:
        raise _err("azimuth_bin_deg", "must divide 360")
    size = c["room_size_range"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, (list, tuple)) and len(v) == 3 for v in size)
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                       for v in size for x in v)):
        raise _err("room_size_range", f"must be [[xmin, ymin, zmin], [xmax, ymax, zmax]], got {size!r}")
    lo, hi = np.asarray(size[0], float), np.asarray(size[1], float)
    if np.any(lo <= 0) or np.any(lo > hi):
        raise _err("room_size_range", f"needs 0 < min <= max per axis, got {size!r}")
    out["room_size_range"] = [lo.tolist(), hi.tolist()]
    margin = out["wall_margin_m"]
    if out["head_height_range"][1] + margin > lo[2] or out["head_height_range"][0] < margin:
        raise _err("head_height_range", f"must lie within wall_margin_m of floor and lowest ceiling ({lo[2]} m)")
    if np.any(lo[:2] < 2 * margin + 2 * out["distance_range"][0]):
        raise _err("distance_range", f"lower bound does not fit the smallest room {lo.tolist()} with "
                                     f"wall_margin_m {margin}")
    pattern = c["azimuth_bin_pattern"]
    if not isinstance(pattern, (list, tuple)) or not pattern or set(pattern) - set(layout.SPLITS):
        raise _err("azimuth_bin_pattern", f"must be a non-empty list of {list(layout.SPLITS)}, got {pattern!r}")
    out["azimuth_bin_pattern"] = list(pattern)
    for split in layout.SPLITS:
        if (out["rooms"][split] or out["anechoic_directions"][split]) and split not in pattern:
            raise _err("azimuth_bin_pattern", f"assigns no azimuth bin to split {split!r}")
    if sum(out["rooms"].values()) + sum(out["anechoic_directions"].values()) == 0:
        raise _err("rooms", "and 'anechoic_directions' are all zero: nothing to generate")
    return out


def _split_bins(cfg: dict, split: str) -> np.ndarray:
    n = int(round(360.0 / cfg["azimuth_bin_deg"]))
    pattern = cfg["azimuth_bin_pattern"]
    return np.array([k for k in range(n) if pattern[k % len(pattern)] == split], dtype=int)


# --------------------------------------------------------------------------- HRIRs
_CACHE: dict = {}


def _kemar():
    """KEMAR HRIRs at 16 kHz with listener-relative directions (cached per process)."""
    if "kemar" not in _CACHE:
        from ..audio import resample_audio

        data = read_sofa(SOFA_PATH)
        ir16 = resample_audio(data.ir, data.sample_rate, layout.SAMPLE_RATE).astype(np.float64)
        _CACHE["kemar"] = (ir16, data.azimuth_deg, data.elevation_deg, data.distance_m)
    return _CACHE["kemar"]


def _sofa_reader(path, fs):
    """``file_reader_callback`` for pyroomacoustics: the same 16 kHz HRIRs as the anechoic set."""
    ir, az, el, dist = _kemar()
    if fs != layout.SAMPLE_RATE:
        raise ValueError(f"KEMAR reader only serves {layout.SAMPLE_RATE} Hz, asked {fs}")
    src = np.stack([np.radians(az), np.radians(90.0 - el), dist])
    return ir, fs, src, np.zeros((3, 2)), None, None


def _ears():
    """Left and right ear directivities (pyroomacoustics MeasuredDirectivity), cached."""
    if "ears" not in _CACHE:
        from pyroomacoustics.directivities import MeasuredDirectivityFile, Rotation3D

        hrtf = MeasuredDirectivityFile(SOFA_PATH, fs=layout.SAMPLE_RATE, file_reader_callback=_sofa_reader)
        _CACHE["ears"] = tuple(hrtf.get_mic_directivity(i, orientation=Rotation3D([0.0], "z")) for i in (0, 1))
    return _CACHE["ears"]


# --------------------------------------------------------------------------- simulation
def _head_frame_vector(az_deg: float, el_deg: float) -> np.ndarray:
    a, e = math.radians(az_deg), math.radians(el_deg)
    return np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])


def _ray_limit(origin: np.ndarray, direction: np.ndarray, dims: np.ndarray, margin: float) -> float:
    """Largest t with origin + t*direction inside the room shrunk by ``margin``."""
    t = np.inf
    for i in range(3):
        if direction[i] > 1e-12:
            t = min(t, (dims[i] - margin - origin[i]) / direction[i])
        elif direction[i] < -1e-12:
            t = min(t, (margin - origin[i]) / direction[i])
    return float(t)


def _draw_room(cfg: dict, split: str, index: int, seed: int) -> dict:
    """All random choices of one room (pure function of seed, split and index)."""
    import pyroomacoustics as pra

    rng = np.random.default_rng([int(seed), 1, layout.SPLITS.index(split), index])
    lo, hi = (np.asarray(v) for v in cfg["room_size_range"])
    margin = cfg["wall_margin_m"]
    for _ in range(_MAX_TRIES):
        dims = rng.uniform(lo, hi)
        rt60 = float(rng.uniform(*cfg["rt60_range"]))
        try:
            absorption, _order = pra.inverse_sabine(rt60, dims)
        except ValueError:
            continue
        if 0.0 < absorption < 1.0:
            break
    else:
        raise _err("rt60_range", f"{cfg['rt60_range']} is not reachable in rooms of room_size_range "
                                 f"{cfg['room_size_range']}")
    d_lo, d_hi = cfg["distance_range"]
    head_lo = np.minimum(margin + d_lo, dims[:2] / 2)
    head_xy = rng.uniform(head_lo, dims[:2] - head_lo)
    head_z = rng.uniform(*cfg["head_height_range"])
    head = np.array([head_xy[0], head_xy[1], head_z])
    yaw = float(rng.uniform(0.0, 360.0))
    bins = _split_bins(cfg, split)
    n = cfg["directions_per_room"]
    chosen = rng.choice(bins, size=n, replace=n > len(bins))
    width, lim = cfg["azimuth_bin_deg"], cfg["elevation_limit_deg"]
    sources = []
    for k in chosen:
        for _ in range(_MAX_TRIES):
            az = (k * width + rng.uniform(-width / 2, width / 2)) % 360.0
            el = float(rng.uniform(-lim, lim))
            vec = _head_frame_vector(az + yaw, el)
            d_max = min(d_hi, _ray_limit(head, vec, dims, margin))
            if d_max >= d_lo:
                dist = float(rng.uniform(d_lo, d_max))
                break
        else:
            raise _err("distance_range", f"{cfg['distance_range']} does not fit inside room "
                                         f"{dims.round(2).tolist()} with wall_margin_m {margin}")
        assert direction_split(az, width, cfg["azimuth_bin_pattern"]) == split
        sources.append({"azimuth_deg": float(az), "elevation_deg": el, "distance_m": dist,
                        "position": (head + dist * vec).tolist()})
    return {"room_id": f"{split}-room{index:03d}", "split": split, "dims_m": dims.tolist(),
            "rt60_s": rt60, "energy_absorption": float(absorption), "head_m": head.tolist(),
            "yaw_deg": yaw, "sources": sources}


def _simulate_room(job: tuple) -> tuple[list[dict], dict]:
    """Simulate and write one room's responses; returns (index rows, room description)."""
    cfg, split, index, seed, out_dir = job
    import pyroomacoustics as pra
    from pyroomacoustics.directivities import Rotation3D

    room_desc = _draw_room(cfg, split, index, seed)
    left, right = _ears()
    orientation = Rotation3D([room_desc["yaw_deg"]], "z")
    left.set_orientation(orientation)
    right.set_orientation(orientation)
    room = pra.ShoeBox(room_desc["dims_m"], fs=layout.SAMPLE_RATE,
                       materials=pra.Material(room_desc["energy_absorption"]),
                       max_order=cfg["max_order"], air_absorption=False, ray_tracing=False,
                       use_rand_ism=False)
    head = np.asarray(room_desc["head_m"])
    room.add_microphone_array(np.stack([head, head], axis=1), directivity=[left, right])
    for src in room_desc["sources"]:
        room.add_source(src["position"])
    room.compute_rir()
    max_len = int(round(cfg["response_seconds"] * layout.SAMPLE_RATE))
    rows = []
    for j, src in enumerate(room_desc["sources"]):
        chans = [np.asarray(room.rir[m][j], dtype=np.float64) for m in (0, 1)]
        n = min(max(len(c) for c in chans), max_len)
        ir = np.zeros((2, n))
        for m, c in enumerate(chans):
            ir[m, : min(n, len(c))] = c[:n]
        rid = f"sim-{room_desc['room_id']}-s{j:02d}"
        rel = f"simulated_room/{split}/{rid}.wav"
        write_response(Path(out_dir) / rel, normalise_response(ir))
        rows.append(dict(response_id=rid, split=split, set="simulated_room", room_id=room_desc["room_id"],
                         azimuth_deg=round(src["azimuth_deg"], 4), elevation_deg=round(src["elevation_deg"], 4),
                         distance_m=round(src["distance_m"], 4), path=rel))
    return rows, room_desc


def _anechoic(cfg: dict, seed: int, out_dir: Path) -> list[dict]:
    ir, az, el, dist = _kemar()
    max_len = int(round(cfg["response_seconds"] * layout.SAMPLE_RATE))
    rows = []
    for split in layout.SPLITS:
        n = cfg["anechoic_directions"][split]
        if n == 0:
            continue
        ok = [i for i in range(len(az))
              if abs(el[i]) <= cfg["elevation_limit_deg"] + 1e-9
              and direction_split(az[i], cfg["azimuth_bin_deg"], cfg["azimuth_bin_pattern"]) == split]
        if n > len(ok):
            raise _err("anechoic_directions", f"[{split}] = {n} exceeds the {len(ok)} KEMAR directions "
                                              f"of that split within elevation_limit_deg")
        rng = np.random.default_rng([int(seed), 2, layout.SPLITS.index(split)])
        chosen = sorted(np.asarray(ok)[rng.permutation(len(ok))[:n]].tolist())
        for i in chosen:
            rid = f"hrtf-{split}-m{i:03d}"
            rel = f"anechoic_hrtf/{split}/{rid}.wav"
            write_response(out_dir / rel, normalise_response(ir[i][:, :max_len]))
            rows.append(dict(response_id=rid, split=split, set="anechoic_hrtf", room_id=f"anechoic-{split}",
                             azimuth_deg=round(float(az[i]), 4), elevation_deg=round(float(el[i]), 4),
                             distance_m=round(float(dist[i]), 4), path=rel))
    return rows


def generate(out_dir: Path, cfg: dict, seed: int, workers: int = 1) -> None:
    """Write the embedded ``responses`` part into ``out_dir`` (existing, empty); see module doc."""
    out_dir = Path(out_dir)
    cfg = validate_cfg(cfg)
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: output directory does not exist")
    jobs = [(cfg, split, i, int(seed), str(out_dir))
            for split in layout.SPLITS for i in range(cfg["rooms"][split])]
    rows = _anechoic(cfg, seed, out_dir)
    rooms = []
    for part, desc in map_ordered(_simulate_room, jobs, workers, desc="simulated rooms", unit="room", chunksize=1):
        rows.extend(part)
        rooms.append(desc)
    layout.write_index("responses", out_dir, rows)
    import pyroomacoustics

    write_json(out_dir / "source.json", {
        "kind": "embedded_rooms",
        "cfg": cfg,
        "seed": int(seed),
        "sets": list(SETS),
        "sofa": {"file": SOFA_PATH.name, "sha256": file_digest(SOFA_PATH)},
        "attribution": ATTRIBUTION,
        "normalisation": "peak of both ears = 1.0 (one gain per response)",
        "simulator": f"pyroomacoustics {pyroomacoustics.__version__} (image sources, max_order {cfg['max_order']})",
        "rooms": rooms,
    })
