"""Naturalness without a listener: Microsoft's DNSMOS predicts the mean opinion score.

Quantised codecs and pruned decoders add buzz and metallic artefacts that WER and speaker
similarity do not see; DNSMOS SIG/OVRL drop when they appear. The speechmos package ships
the ONNX models, so this runs offline.

Short clips: DNSMOS scores 9.01 s windows. speechmos (like Microsoft's reference script)
repeats a shorter clip end to end until it fills one window, and that is kept here. Clips
under ``MIN_SECONDS`` raise AudioError instead: tiling a few milliseconds scores a buzz, and
an empty clip would make speechmos loop forever.
"""
from __future__ import annotations

import warnings

import numpy as np

from spade_tts.audio import MIN_SECONDS, AudioError


def dnsmos(audio16k: np.ndarray) -> dict[str, float]:
    """{'p808', 'sig', 'bak', 'ovrl'} MOS estimates (about 1-5) for 16 kHz mono audio."""
    audio = np.asarray(audio16k, dtype=np.float32)
    if audio.ndim != 1:
        raise AudioError(f"audio has shape {audio.shape}: pass 16 kHz mono (spade_tts.audio.to_mono_16k)")
    if not np.all(np.isfinite(audio)):
        raise AudioError("audio contains NaN or Inf samples: the model output is corrupt; regenerate it")
    if audio.size < MIN_SECONDS * 16000:
        raise AudioError(
            f"audio is {audio.size / 16000:.2f} s, too short for DNSMOS (minimum {MIN_SECONDS} s): "
            "score whole utterances, not fragments"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from speechmos import dnsmos as _speechmos
    except ImportError as e:
        raise ImportError(f"DNSMOS needs speechmos ({e}); fix: pip install speechmos onnxruntime") from e
    # speechmos rejects samples outside [-1, 1] instead of clipping them.
    r = _speechmos.run(np.clip(audio, -1.0, 1.0), sr=16000)
    return {"p808": float(r["p808_mos"]), "sig": float(r["sig_mos"]), "bak": float(r["bak_mos"]), "ovrl": float(r["ovrl_mos"])}
