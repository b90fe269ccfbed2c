"""Speaker similarity: does the compressed model still clone the prompt's voice?

resemblyzer's GE2E encoder is small, CPU-fast and offline, which suits a check run after
every compression step. Its scale differs from the WavLM-based SIM in papers (here the
same voice scores about 0.9, different voices about 0.55), so compare runs with each
other, not with published SIM numbers.
"""
from __future__ import annotations

import threading
import warnings

import numpy as np

from spade_tts.audio import SILENCE_RMS, AudioError

MIN_VOICED_SECONDS = 0.1  # below this the VAD kept nothing a speaker could be recognised from


def _import_resemblyzer():
    try:
        with warnings.catch_warnings():  # webrtcvad's pkg_resources and scipy deprecation notices
            warnings.simplefilter("ignore")
            from resemblyzer import VoiceEncoder, preprocess_wav
    except ImportError as e:
        if "pkg_resources" in str(e):
            raise ImportError(
                "resemblyzer needs pkg_resources, which setuptools 81+ removed; fix: pip install 'setuptools<81'"
            ) from e
        raise ImportError(f"speaker similarity needs resemblyzer ({e}); fix: pip install resemblyzer 'setuptools<81'") from e
    return VoiceEncoder, preprocess_wav


class SpeakerEncoder:
    def __init__(self, device: str = "cpu"):
        self.device = device
        self._encoder = None
        self._preprocess = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._encoder is None:
                VoiceEncoder, self._preprocess = _import_resemblyzer()
                self._encoder = VoiceEncoder(self.device, verbose=False)
        return self._encoder

    def embed(self, audio16k: np.ndarray) -> np.ndarray:
        """Unit-length utterance embedding of 16 kHz mono audio.

        Raises AudioError for silence or when voice activity detection finds no speech:
        resemblyzer would otherwise return a plausible-looking vector (or NaNs) for it.
        """
        audio = np.asarray(audio16k, dtype=np.float32)
        if audio.ndim != 1:
            raise AudioError(f"audio has shape {audio.shape}: pass 16 kHz mono (spade_tts.audio.to_mono_16k)")
        if not np.all(np.isfinite(audio)):
            raise AudioError("audio contains NaN or Inf samples: the model output is corrupt; regenerate it")
        if audio.size == 0 or np.sqrt(np.mean(np.square(audio, dtype=np.float64))) < SILENCE_RMS:
            # resemblyzer's volume normalisation divides by the RMS and turns silence into NaN
            raise AudioError(f"audio for the speaker embedding is silent ({audio.size / 16000:.2f} s): nothing to compare")
        encoder = self._load()
        # source_sr=None: already 16 kHz, so skip resemblyzer's resampling and keep only
        # its volume normalisation and silence trimming.
        wav = self._preprocess(np.clip(audio, -1.0, 1.0), source_sr=None)
        if wav.size < MIN_VOICED_SECONDS * 16000:
            raise AudioError(
                f"no speech found in {audio.size / 16000:.2f} s of audio for the speaker embedding: "
                "check that the clip is not silent or pure noise"
            )
        e = encoder.embed_utterance(wav).astype(np.float32)
        return e / np.linalg.norm(e)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of the speakers in two 16 kHz mono clips."""
        return cosine(self.embed(a), self.embed(b))


def cosine(e1: np.ndarray, e2: np.ndarray) -> float:
    return float(np.dot(e1, e2) / (np.linalg.norm(e1) * np.linalg.norm(e2)))


_CACHE: dict[str, SpeakerEncoder] = {}
_CACHE_LOCK = threading.Lock()


def get_speaker_encoder(device: str = "cpu") -> SpeakerEncoder:
    """One shared encoder per device, so every scorer reuses the loaded weights."""
    with _CACHE_LOCK:
        if device not in _CACHE:
            _CACHE[device] = SpeakerEncoder(device)
        return _CACHE[device]
