"""Audio I/O with validation: every problem is reported with the file it came from."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import KboostError
from .fsutil import atomic_file


_SFC_SET_ADD_PEAK_CHUNK = 0x1050  # libsndfile command id (sndfile.h)


class AudioError(KboostError, ValueError):
    """A source file that cannot be used as it is (unreadable, wrong shape, silent, NaN)."""


def read_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    channels: int | None = None,
    resample: bool = False,
    allow_silent: bool = False,
    start: int = 0,
    frames: int = -1,
) -> np.ndarray:
    """Read ``path`` as float32, shape ``[channels, samples]``.

    ``sample_rate``: required rate; with ``resample`` other rates are converted, otherwise
    a mismatch is an error. ``channels``: required channel count. ``start`` / ``frames``
    read only a segment (in the file's samples; -1 = to the end), without decoding the rest.
    Raises :class:`AudioError` naming the file on any problem.
    """
    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True, start=start, frames=frames)
    except Exception as exc:  # soundfile raises several types; all mean "unreadable"
        raise AudioError(f"{path}: cannot read audio ({exc})") from exc
    audio = np.ascontiguousarray(data.T)
    if channels is not None and audio.shape[0] != channels:
        raise AudioError(f"{path}: expected {channels} channel(s), found {audio.shape[0]}")
    if sample_rate is not None and sr != sample_rate:
        if not resample:
            raise AudioError(f"{path}: expected sample rate {sample_rate} Hz, found {sr} Hz")
        audio = resample_audio(audio, sr, sample_rate)
    check_signal(audio, str(path), allow_silent=allow_silent)
    return audio


def check_signal(audio: np.ndarray, name: str, allow_silent: bool = False) -> None:
    """Raise :class:`AudioError` if ``audio`` is empty, non-finite or (unless allowed) silent."""
    if audio.size == 0 or audio.shape[-1] == 0:
        raise AudioError(f"{name}: audio is empty")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if not allow_silent and float(np.max(np.abs(audio))) < 1e-6:
        raise AudioError(f"{name}: audio is silent (peak below 1e-6)")


def resample_audio(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling along the last axis (exact rational ratio)."""
    if rate_in == rate_out:
        return audio.astype(np.float32, copy=False)
    ratio = Fraction(rate_out, rate_in)
    from scipy.signal import resample_poly  # lazy: scipy.signal takes ~1.5 s to import

    out = resample_poly(audio, ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(np.float32)


WRITABLE_FORMATS = ("WAV", "FLAC")  # what write_audio writes (lossless, from the extension)


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` can take write_audio's output: a .wav or .flac file name in an existing folder,
    not a directory. Checked before any work, so a long run never fails at its last step."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a directory; give an output file name such as {path / 'out.wav'}")
    if path.suffix[1:].upper() not in WRITABLE_FORMATS:
        found = f"'{path.suffix}'" if path.suffix else "no extension"
        raise AudioError(f"{path}: cannot write audio with {found}; use .wav (32-bit float) or .flac")
    if not path.parent.is_dir():
        raise AudioError(f"{path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise AudioError(f"{path}: folder {path.parent} is not writable")
    return path


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    """Write ``[channels, samples]`` (or 1-D mono) audio atomically.

    The format follows the extension. ``subtype`` defaults to PCM_16 for FLAC and FLOAT for WAV
    (room responses need float precision).
    """
    path = Path(path)
    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[None]
    check_signal(audio, str(path), allow_silent=True)
    if subtype is None:
        subtype = "FLOAT" if path.suffix.lower() == ".wav" else "PCM_16"
    file_format = path.suffix[1:].upper()
    with atomic_file(path) as tmp:
        with sf.SoundFile(str(tmp), "w", sample_rate, audio.shape[0], subtype=subtype, format=file_format) as f:
            if file_format == "WAV":
                # libsndfile stamps float WAVs with a PEAK chunk holding the current time, which
                # would make identical audio written a second apart differ byte-wise.
                sf._snd.sf_command(f._file, _SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)
            f.write(audio.T)


def quantize_pcm16(audio: np.ndarray) -> np.ndarray:
    """Round to the 16-bit PCM grid (values k / 32768), raising if anything would clip.

    Mixture stems are quantised before they are summed, so that the stored mixture is exactly
    the sum of the stored stems.
    """
    scaled = np.round(np.asarray(audio, dtype=np.float64) * 32768.0)
    if scaled.size and (scaled.max() > 32767 or scaled.min() < -32768):
        raise AudioError("signal exceeds the 16-bit range; scale it down before quantising")
    return (scaled / 32768.0).astype(np.float32)
