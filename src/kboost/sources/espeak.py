"""A small ctypes wrapper around the libespeak-ng shipped by the ``espeakng-loader`` wheel.

Used by the embedded (offline) data generators to synthesise many distinct "speakers": a
speaker is a (voice, variant, pitch, rate) tuple. Output is deterministic for the same inputs.

espeak-ng keeps its state in the process (one current voice, one callback, and hidden
synthesis state that carries over from one utterance to the next). This module initialises
the library lazily, once per process (a forked worker re-initialises on first use), never
synthesises in that process, and runs every utterance in a short-lived child forked from it
(synchronous mode, a callback collecting the int16 samples; about 10 ms overhead per call).
Output is therefore a function of (speaker, text, sample_rate) only, whatever the process
spoke before. POSIX only (os.fork). Not thread-safe: use processes for parallelism.

Variants with a "breath" setting add noise that differs between processes; they are not
reproducible and :func:`speaker_pool` refuses them (see :func:`nondeterministic_variants`).

Voice names: "en", "en-us", "en-GB-scotland", "en-GB-x-rp", "en-029", ... work; "en-gb" is
refused by this build. Variants (files in ``espeak-ng-data/voices/!v``, see
:func:`available_variants`) are appended as "voice+variant", e.g. "en-us+m3".
"""
from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import resample_audio

ESPEAK_RATE = 22050  # espeak-ng's native output rate (checked at initialisation)
TRIM_MARGIN_S = 0.05  # silence kept before the first / after the last active sample
TRIM_THRESHOLD_DB = -40.0  # "active" = above this level relative to the peak

# espeak_AUDIO_OUTPUT / espeak_PARAMETER / flags from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_ESPEAK_VOLUME = 2
_ESPEAK_PITCH = 3
_ESPEAK_RANGE = 4
_EE_OK = 0

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Speaker:
    """A synthetic talker. ``pitch``: espeak pitch base 0-99 (50 = the variant's default);
    ``rate``: words per minute (espeak accepts 80-450)."""

    speaker_id: str
    voice: str
    variant: str
    pitch: int
    rate: int

    @property
    def voice_name(self) -> str:
        return f"{self.voice}+{self.variant}" if self.variant else self.voice


class _Engine:
    """Process-local espeak-ng state."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib_path = espeakng_loader.get_library_path()
        self.data_path = espeakng_loader.get_data_path()
        # RTLD_LOCAL load of the wheel's library; it does not touch the system's espeak.
        lib = ctypes.CDLL(self.lib_path)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        self.lib = lib
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (data path {self.data_path})")
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"espeak-ng reports {rate} Hz, expected {ESPEAK_RATE} Hz")
        self.rate = rate
        self.chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.version = lib.espeak_Info(None).decode()

    def _collect(self, wav, numsamples, events) -> int:
        if numsamples > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0  # 0 = continue synthesis

    def synth(self, voice_name: str, pitch: int, rate: int, text: str) -> np.ndarray:
        """Synthesise in a child forked from this never-used engine and return int16 samples.

        espeak-ng keeps hidden state between utterances (pitch-flutter phase, gain control,
        resonator memories), so the same call would otherwise depend on what the process
        spoke before. A forked child starts from the pristine, just-initialised state every
        time, which makes the output a function of the arguments alone.
        """
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: synthesise, send "K"+samples or "E"+message, exit without cleanup
            status = 0
            try:
                os.close(read_fd)
                try:
                    payload = b"K" + self._synth_here(voice_name, pitch, rate, text).astype("<i2").tobytes()
                except Exception as exc:  # report to the parent, which raises it
                    payload = b"E" + str(exc).encode("utf-8", "replace")
                view = memoryview(payload)
                while view:
                    view = view[os.write(write_fd, view):]
                os.close(write_fd)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        os.close(write_fd)
        parts = []
        with os.fdopen(read_fd, "rb") as pipe:
            while chunk := pipe.read(1 << 20):
                parts.append(chunk)
        _, status = os.waitpid(pid, 0)
        payload = b"".join(parts)
        if not payload or status != 0:
            raise RuntimeError(f"espeak-ng synthesis process failed (status {status}) for voice {voice_name!r}")
        if payload[:1] == b"E":
            raise RuntimeError(payload[1:].decode("utf-8", "replace"))
        return np.frombuffer(payload, dtype="<i2", offset=1).astype(np.int16)

    def _synth_here(self, voice_name: str, pitch: int, rate: int, text: str) -> np.ndarray:
        lib = self.lib
        if lib.espeak_SetVoiceByName(voice_name.encode()) != _EE_OK:
            raise RuntimeError(
                f"espeak-ng refused voice {voice_name!r} (note: 'en-gb' is not a valid name here; "
                f"use e.g. 'en', 'en-us', 'en-GB-x-rp'; variants are listed by available_variants())"
            )
        for param, value in ((_ESPEAK_RATE, rate), (_ESPEAK_PITCH, pitch), (_ESPEAK_RANGE, 50), (_ESPEAK_VOLUME, 100)):
            if lib.espeak_SetParameter(param, int(value), 0) != _EE_OK:
                raise RuntimeError(f"espeak-ng rejected parameter {param}={value} for voice {voice_name!r}")
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data, len(data))
        self.chunks = []
        err = lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        chunks, self.chunks = self.chunks, []
        if err != _EE_OK:
            raise RuntimeError(f"espeak-ng synthesis failed (error {err}) for voice {voice_name!r}: {text[:60]!r}")
        if not chunks:
            raise RuntimeError(f"espeak-ng produced no audio for voice {voice_name!r}: {text[:60]!r}")
        return np.concatenate(chunks)


_engine: _Engine | None = None
_engine_pid: int | None = None


def _get_engine() -> _Engine:
    """The process's engine, created on first use (and again in a forked child)."""
    global _engine, _engine_pid
    if _engine is None or _engine_pid != os.getpid():
        _engine = _Engine()
        _engine_pid = os.getpid()
    return _engine


def version() -> str:
    """The espeak-ng library version string, e.g. '1.52.0'."""
    return _get_engine().version


def data_path() -> Path:
    import espeakng_loader

    return Path(espeakng_loader.get_data_path())


def available_variants() -> list[str]:
    """Names of the voice variants shipped in ``espeak-ng-data/voices/!v`` (sorted)."""
    folder = data_path() / "voices" / "!v"
    return sorted(p.name for p in folder.iterdir() if p.is_file())


@functools.lru_cache(maxsize=1)
def _variant_set() -> frozenset[str]:
    return frozenset(available_variants())


@functools.lru_cache(maxsize=1)
def nondeterministic_variants() -> tuple[str, ...]:
    """Shipped variants whose output is not reproducible across processes (breath noise)."""
    folder = data_path() / "voices" / "!v"
    found = []
    for path in sorted(folder.iterdir()):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            fields = line.split("//")[0].split()
            if fields and fields[0] == "breath" and any(f.lstrip("-").isdigit() and int(f) for f in fields[1:]):
                found.append(path.name)
                break
    return tuple(found)


def _trim(samples: np.ndarray, rate: int) -> np.ndarray:
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak <= 0:
        return samples
    active = np.flatnonzero(np.abs(samples) >= peak * 10 ** (TRIM_THRESHOLD_DB / 20))
    margin = int(round(TRIM_MARGIN_S * rate))
    start = max(0, int(active[0]) - margin)
    stop = min(samples.size, int(active[-1]) + 1 + margin)
    return samples[start:stop]


def synthesize(speaker: Speaker, text: str, sample_rate: int = 16000) -> np.ndarray:
    """Speak ``text`` with ``speaker``: float32 mono in [-1, 1] at ``sample_rate``.

    Leading and trailing silence is trimmed to at most ~50 ms. Raises RuntimeError naming the
    voice if espeak-ng refuses it or produces no (or only silent) audio.
    """
    if not text.strip():
        raise ValueError("synthesize: text is empty")
    if speaker.variant and speaker.variant not in _variant_set():
        raise RuntimeError(f"espeak-ng has no variant {speaker.variant!r} (voice {speaker.voice_name!r}); see available_variants()")
    engine = _get_engine()
    raw = engine.synth(speaker.voice_name, speaker.pitch, speaker.rate, text)
    if not np.any(raw):
        raise RuntimeError(f"espeak-ng produced only silence for voice {speaker.voice_name!r}: {text[:60]!r}")
    audio = _trim(raw.astype(np.float32) / 32768.0, engine.rate)
    audio = resample_audio(audio, engine.rate, sample_rate)
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


def speaker_pool(
    n: int,
    seed: int,
    voices: list[str],
    variants: list[str],
    pitch_range: tuple[int, int],
    rate_range: tuple[int, int],
    prefix: str,
) -> list[Speaker]:
    """``n`` distinct speakers drawn deterministically from ``seed``.

    Each is a distinct (voice, variant, pitch, rate) tuple; ranges are inclusive. Ids are
    ``f"{prefix}{i:04d}"``. Raises ValueError if the space holds fewer than ``n`` tuples.
    An empty-string variant means the voice's default.
    """
    if n < 0:
        raise ValueError(f"speaker_pool: n must be >= 0, got {n}")
    if not voices or not variants:
        raise ValueError("speaker_pool: voices and variants must be non-empty lists")
    (p_lo, p_hi), (r_lo, r_hi) = (int(v) for v in pitch_range), (int(v) for v in rate_range)
    if not 0 <= p_lo <= p_hi <= 99:
        raise ValueError(f"speaker_pool: pitch_range must satisfy 0 <= lo <= hi <= 99, got {list(pitch_range)}")
    if not 80 <= r_lo <= r_hi <= 450:
        raise ValueError(f"speaker_pool: rate_range must satisfy 80 <= lo <= hi <= 450, got {list(rate_range)}")
    check_variants(variants, "speaker_pool: variants")
    if len(set(voices)) != len(voices) or len(set(variants)) != len(variants):
        raise ValueError("speaker_pool: voices and variants must not contain duplicates")
    space = len(voices) * len(variants) * (p_hi - p_lo + 1) * (r_hi - r_lo + 1)
    if n > space:
        raise ValueError(f"speaker_pool: asked for {n} distinct speakers but only {space} (voice, variant, pitch, rate) tuples exist")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5BEA]))
    seen: set[tuple] = set()
    speakers: list[Speaker] = []
    # Cycle voice x variant in a shuffled order so accents and variants are spread evenly.
    combos = [(v, w) for v in voices for w in variants]
    order: list[int] = []
    while len(speakers) < n:
        if not order:
            order = list(rng.permutation(len(combos)))
        voice, variant = combos[order.pop()]
        key = (voice, variant, int(rng.integers(p_lo, p_hi + 1)), int(rng.integers(r_lo, r_hi + 1)))
        if key in seen:
            continue
        seen.add(key)
        speakers.append(Speaker(f"{prefix}{len(speakers):04d}", *key))
    return speakers


def check_variants(variants: list[str], key: str) -> None:
    """Raise ValueError (naming ``key``) for unknown variants or ones whose output varies run to run."""
    unstable = set(nondeterministic_variants())
    for variant in variants:
        if variant and variant not in _variant_set():
            raise ValueError(f"{key}: unknown espeak variant {variant!r}")
        if variant in unstable:
            raise ValueError(f"{key}: variant {variant!r} is not reproducible (breath noise); remove it")
