"""Audio in and out, with checks that fail early and say how to fix the input.

A voice-cloning prompt that is silent, clipped or a few milliseconds long does not crash
the model: it quietly yields a bad voice, and the user blames the compression. So the
checks here run before any model sees the audio, and every error is one line that names
the file, the problem and the fix. Everything inside spade-tts works on float32 mono;
this module is the single place where files of any rate and channel count become that.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

MIN_SECONDS = 0.3  # shorter than a syllable: no speaker or content information
SILENCE_RMS = 1e-4  # -80 dBFS; real recordings have a noise floor above this
CLIP_LEVEL = 0.999  # int16 full scale (32767/32768) lands above this
CLIP_FRACTION = 0.01  # a few clipped peaks are normal; 1 % of samples is distortion


class AudioError(ValueError):
    """Audio that cannot be used; the message says why and what to do."""


def _dbfs(x: float) -> str:
    return "-inf" if x <= 0 else f"{20 * math.log10(x):.1f}"


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Mix channels by their mean.

    A 2-D array may come as (frames, channels) from soundfile or (channels, frames) from
    librosa; the shorter axis is taken as channels since no clip has more channels than samples.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise AudioError(f"audio has {audio.ndim} dimensions: pass a 1-D mono or 2-D multichannel array")
    axis = 1 if audio.shape[1] <= audio.shape[0] else 0
    return audio.mean(axis=axis, dtype=np.float32)


def resample(audio: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Polyphase resampling: exact rational ratio, anti-aliased, deterministic, no FFT wrap-around."""
    if sr_from <= 0 or sr_to <= 0:
        raise AudioError(f"sample rate must be positive, got {sr_from} -> {sr_to}")
    audio = np.asarray(audio, dtype=np.float32)
    if sr_from == sr_to or audio.size == 0:
        return audio
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_from), int(sr_to))
    out = resample_poly(audio, int(sr_to) // g, int(sr_from) // g)
    return np.ascontiguousarray(out, dtype=np.float32)


def to_mono_16k(audio: np.ndarray, sr: int) -> np.ndarray:
    """The form every scorer and the tokenizer expect: float32, mono, 16 kHz."""
    return resample(to_mono(audio), sr, 16000)


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Read any file libsndfile can decode (WAV, FLAC, OGG, MP3) as float32 mono at ``sample_rate``."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file {p} does not exist: check the path")
    if p.is_dir():
        raise AudioError(f"audio path {p} is a directory: pass a single audio file")
    if p.stat().st_size == 0:
        raise AudioError(f"audio file {p} is empty (0 bytes): re-export or re-record it")
    import soundfile as sf

    try:
        audio, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises LibsndfileError/RuntimeError with a terse reason
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AudioError(
            f"cannot decode {p} as audio ({reason}): convert it to WAV, e.g. ffmpeg -i {p.name} -ac 1 -ar 16000 out.wav"
        ) from None
    if audio.shape[0] == 0:
        raise AudioError(f"audio file {p} has no samples: re-export or re-record it")
    return resample(audio.mean(axis=1, dtype=np.float32), int(sr), sample_rate)


def check_speech(audio: np.ndarray, sr: int, *, what: str = "prompt audio") -> None:
    """Reject audio that would silently produce garbage; ``what`` names it in the message."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise AudioError(f"{what} has shape {audio.shape}: convert it to mono first (spade_tts.audio.to_mono)")
    if audio.size == 0:
        raise AudioError(f"{what} is empty: record or pick a clip with speech")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{what} contains NaN or Inf samples: the file or the model output is corrupt; regenerate it")
    seconds = audio.size / sr
    if seconds < MIN_SECONDS:
        raise AudioError(
            f"{what} is too short ({seconds:.2f} s < {MIN_SECONDS} s): use a clip with at least a word of speech (3-10 s works best)"
        )
    peak = float(np.max(np.abs(audio)))
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise AudioError(f"{what} is silent (peak {_dbfs(peak)} dBFS): record or pick a clip with speech")
    clipped = float(np.mean(np.abs(audio) >= CLIP_LEVEL))
    if clipped > CLIP_FRACTION:
        raise AudioError(
            f"{what} is heavily clipped ({100 * clipped:.1f} % of samples at full scale): "
            "re-record with lower input gain or pick a cleaner clip"
        )


def save_wav(path: str | os.PathLike, audio: np.ndarray, sr: int) -> None:
    """Write 16-bit PCM via a temp file and rename, so a crash never leaves a half-written WAV
    that a later run would load as a valid (truncated) clip."""
    import soundfile as sf

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim not in (1, 2):
        raise AudioError(f"cannot save audio of shape {audio.shape}: pass (frames,) or (frames, channels)")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"refusing to save {path}: audio contains NaN or Inf samples")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            sf.write(f, np.clip(audio, -1.0, 1.0), int(sr), subtype="PCM_16", format="WAV")
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
