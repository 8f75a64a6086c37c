"""A device link with jitter and loss: when each hint reaches the device, and which hint the
device uses at each frame (beyond the paper, which assumes every hint arrives exactly C chunks
late). Torch-free.

Hint k (the hint of frame k) is sent at chunk k and arrives at chunk ``k + base + extra_k``:
``extra_k`` is the jitter (whole chunks: geometric with mean j, or uniform on 0..2j), and a
two-state Gilbert-Elliott chain decides which hints are lost (the bad state loses every hint;
``burst`` is its mean length in hints, and the chain's stationary share of bad hints is
``loss``). At frame t the device holds the hints that have arrived by t (packets carry the index
of their frame). Its ``policy`` when the hint of frame t - base is not there:

    newest   use the newest hint it holds, at its true age t - k (if at most ``max_age``)
    zeros    use no hint (zeros), as before the first hint arrives

A schedule is the age of the hint used at each frame (kboost.models.boosting.NO_HINT = -1 for
none); a frame's entry depends only on arrivals up to that frame, so the link stays causal.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

NO_HINT = -1  # = kboost.models.boosting.NO_HINT
JITTERS = ("geometric", "uniform")
POLICIES = ("newest", "zeros")


@dataclass(frozen=True)
class LinkModel:
    base: int                  # chunks every hint takes at least (the pair's delay C)
    loss: float = 0.0          # stationary share of lost hints, [0, 1)
    burst: float = 1.0         # mean length of a run of lost hints (>= 1)
    jitter: float = 0.0        # mean extra delay in chunks
    jitter_kind: str = "geometric"
    policy: str = "newest"
    max_age: int = 16          # the device keeps hints (and its features) this many chunks

    def __post_init__(self):
        if self.base < 0 or self.max_age < self.base:
            raise ValueError(f"need 0 <= base <= max_age, got base {self.base}, max_age {self.max_age}")
        if not 0 <= self.loss < 1:
            raise ValueError(f"loss must be in [0, 1), got {self.loss}")
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1 hint, got {self.burst}")
        if self.loss / (1 - self.loss) / self.burst > 1:
            raise ValueError(f"loss {self.loss} with bursts of {self.burst} needs the good state to last under "
                             f"one hint; lengthen the bursts")
        if self.jitter < 0 or self.jitter_kind not in JITTERS:
            raise ValueError(f"jitter must be >= 0 with a kind in {JITTERS}, got {self.jitter} {self.jitter_kind!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {', '.join(POLICIES)}")

    @property
    def label(self) -> str:
        return f"loss{self.loss:g}-jitter{self.jitter:g}"

    def lost(self, hints: int, rng: np.random.Generator) -> np.ndarray:
        """Which of ``hints`` consecutive hints the Gilbert-Elliott chain loses (bool)."""
        if self.loss == 0:
            return np.zeros(hints, dtype=bool)
        leave_bad = 1.0 / self.burst
        enter_bad = self.loss * leave_bad / (1 - self.loss)
        draws = rng.random(hints + 1)
        bad = np.empty(hints, dtype=bool)
        state = draws[0] < self.loss  # start in the stationary distribution
        for k in range(hints):
            bad[k] = state
            state = draws[k + 1] >= leave_bad if state else draws[k + 1] < enter_bad
        return bad

    def extra_delays(self, hints: int, rng: np.random.Generator) -> np.ndarray:
        """Each hint's jitter, whole chunks >= 0."""
        if self.jitter == 0:
            return np.zeros(hints, dtype=np.int64)
        if self.jitter_kind == "geometric":
            return rng.geometric(1.0 / (1.0 + self.jitter), hints).astype(np.int64) - 1
        return rng.integers(0, int(round(2 * self.jitter)) + 1, hints)

    def arrivals(self, hints: int, rng: np.random.Generator) -> np.ndarray:
        """The chunk at which each hint arrives; -1 for a lost one."""
        lost = self.lost(hints, rng)
        arrival = np.arange(hints) + self.base + self.extra_delays(hints, rng)
        return np.where(lost, -1, arrival)

    def schedule_from_arrivals(self, arrival: np.ndarray) -> np.ndarray:
        """Age of the hint the device uses at each frame (NO_HINT: none), given each hint's arrival."""
        frames = len(arrival)
        index = np.arange(frames)
        if self.policy == "zeros":  # only the hint of frame t - base, if it is there in time
            needed = index - self.base
            ok = needed >= 0
            on_time = np.zeros(frames, dtype=bool)
            on_time[ok] = (arrival[needed[ok]] >= 0) & (arrival[needed[ok]] <= index[ok])
            return np.where(on_time, self.base, NO_HINT)
        newest = np.full(frames, -1, dtype=np.int64)  # newest hint index arrived at each chunk
        arrived = (arrival >= 0) & (arrival < frames)
        np.maximum.at(newest, arrival[arrived], index[arrived])
        newest = np.maximum.accumulate(newest)
        age = index - newest
        return np.where((newest >= 0) & (age <= self.max_age), age, NO_HINT)

    def schedule(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        return self.schedule_from_arrivals(self.arrivals(frames, rng))


def clip_rng(seed: int, *names) -> np.random.Generator:
    """The random stream of one (condition, clip): the same for every pair, so pairs are compared
    on the same link realisations."""
    return np.random.default_rng([seed] + [zlib.crc32(str(name).encode()) for name in names])


def sweep(params: dict) -> list[tuple[str, LinkModel]]:
    """The link conditions of params ``link`` at base delay params ``delay``: ("loss", model) for
    each loss rate at jitter 0, then ("jitter", model) for each jitter above 0 at loss 0."""
    link, base = params["link"], int(params["delay"])
    common = dict(base=base, burst=float(link["burst_chunks"]), jitter_kind=link["jitter"],
                  policy=link["policy"], max_age=int(link["max_age"]))
    out = [("loss", LinkModel(loss=float(rate), **common)) for rate in link["loss_rates"]]
    out += [("jitter", LinkModel(jitter=float(j), **common)) for j in link["jitter_chunks"] if j > 0]
    return out
