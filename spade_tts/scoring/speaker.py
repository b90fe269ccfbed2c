"""Speaker similarity: does the compressed model still clone the prompt's voice?

Two encoders share one interface (``embed``, ``similarity``) and one set of input rules:

* resemblyzer's GE2E encoder, the offline default: small, CPU-fast and in the package, which
  suits a check run after every compression step. Its scale differs from the SIM in papers
  (here the same voice scores about 0.9, different voices about 0.55), so compare runs with
  each other, not with published numbers.
* a WavLM speaker-verification checkpoint (transformers ``WavLMForXVector``, e.g.
  wavlm-base-plus-sv) from a local folder: the paper-comparable one, since papers compute SIM
  as the cosine of WavLM speaker-verification embeddings (Seed-TTS-eval uses WavLM-large
  fine-tuned for verification, distributed as a UniSpeech checkpoint rather than a transformers
  folder, so a transformers checkpoint is the same method, not necessarily the same numbers).
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from spade_tts.audio import SILENCE_RMS, AudioError
from spade_tts.scoring.common import (
    SAMPLE_RATE,
    checked_audio,
    load_feature_extractor,
    load_model,
    local_config,
    model_inputs,
)

MIN_VOICED_SECONDS = 0.1  # below this resemblyzer's VAD kept nothing a speaker could be recognised from
WAVLM_EXPECTED = (
    "a local transformers WavLM speaker-verification folder (WavLMForXVector, e.g. wavlm-base-plus-sv), or None for resemblyzer"
)


class SpeakerEncoder:
    """Unit-length speaker embeddings and their cosine; subclasses say how a checked clip becomes a vector."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                self._model = self._build()
        return self._model

    def _build(self):
        raise NotImplementedError

    def _embed(self, audio: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed(self, audio16k: np.ndarray) -> np.ndarray:
        """Unit-length utterance embedding of 16 kHz mono audio.

        Raises AudioError for silence: an encoder would otherwise return a plausible-looking
        vector (or NaNs, for resemblyzer, whose volume normalisation divides by the RMS).
        """
        audio = checked_audio(audio16k)
        if audio.size == 0 or np.sqrt(np.mean(np.square(audio, dtype=np.float64))) < SILENCE_RMS:
            raise AudioError(f"audio for the speaker embedding is silent ({audio.size / SAMPLE_RATE:.2f} s): nothing to compare")
        e = np.asarray(self._embed(audio), dtype=np.float32)
        return e / np.linalg.norm(e)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of the speakers in two 16 kHz mono clips."""
        return cosine(self.embed(a), self.embed(b))


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


class ResemblyzerEncoder(SpeakerEncoder):
    """resemblyzer GE2E (256-d), the offline default."""

    def _build(self):
        VoiceEncoder, preprocess = _import_resemblyzer()
        return VoiceEncoder(self.device, verbose=False), preprocess

    def _embed(self, audio: np.ndarray) -> np.ndarray:
        encoder, preprocess = self._load()
        # source_sr=None: already 16 kHz, so skip resemblyzer's resampling and keep only
        # its volume normalisation and silence trimming.
        wav = preprocess(np.clip(audio, -1.0, 1.0), source_sr=None)
        if wav.size < MIN_VOICED_SECONDS * SAMPLE_RATE:
            raise AudioError(
                f"no speech found in {audio.size / SAMPLE_RATE:.2f} s of audio for the speaker embedding: "
                "check that the clip is not silent or pure noise"
            )
        return encoder.embed_utterance(wav)


def _xvector_min_samples(cfg) -> int:
    """Shortest clip the x-vector head can pool: its TDNN eats frames at the edges and the
    standard-deviation pooling needs two frames left; inverted through the conv front end."""
    frames = 2 + sum((k - 1) * d for k, d in zip(cfg.tdnn_kernel, cfg.tdnn_dilation))
    for k, s in reversed(list(zip(cfg.conv_kernel, cfg.conv_stride))):
        frames = (frames - 1) * s + k
    return frames


class WavLMEncoder(SpeakerEncoder):
    """The ``.embeddings`` output of a transformers ``WavLMForXVector`` checkpoint (16 kHz input)."""

    def __init__(self, model: str, device: str = "cpu"):
        super().__init__(device)
        self.model_dir = str(model)
        cfg = local_config(model, "speaker", WAVLM_EXPECTED)
        if cfg.model_type != "wavlm":
            raise ValueError(f"speaker model folder {model} holds model_type {cfg.model_type!r}, not 'wavlm': pass {WAVLM_EXPECTED}")
        if "WavLMForXVector" not in (cfg.architectures or []):
            arch = ", ".join(cfg.architectures or []) or "with no architectures entry"
            raise ValueError(f"speaker model folder {model} is a WavLM {arch}, not WavLMForXVector: pass {WAVLM_EXPECTED}")
        self.min_samples = _xvector_min_samples(cfg)

    def _build(self):
        from transformers import WavLMForXVector

        fe = load_feature_extractor(self.model_dir, "speaker", WAVLM_EXPECTED)
        return fe, load_model(WavLMForXVector, self.model_dir, "speaker", WAVLM_EXPECTED, self.device)

    def _embed(self, audio: np.ndarray) -> np.ndarray:
        if audio.size < self.min_samples:
            raise AudioError(
                f"audio is {audio.size / SAMPLE_RATE:.3f} s, shorter than the {self.min_samples / SAMPLE_RATE:.3f} s "
                "the WavLM x-vector model needs: score whole utterances, not fragments"
            )
        import torch

        fe, net = self._load()
        with torch.inference_mode():
            e = net(**model_inputs(fe, net, audio)).embeddings[0]
        return e.float().cpu().numpy()


def cosine(e1: np.ndarray, e2: np.ndarray) -> float:
    return float(np.dot(e1, e2) / (np.linalg.norm(e1) * np.linalg.norm(e2)))


_CACHE: dict[tuple, SpeakerEncoder] = {}
_CACHE_LOCK = threading.Lock()


def get_speaker_encoder(model: str | None = None, device: str = "cpu") -> SpeakerEncoder:
    """resemblyzer for ``model=None``, else the WavLM x-vector checkpoint in the local folder ``model``.

    One shared encoder per (model, device), so every scorer reuses the loaded weights; a folder
    that is not a WavLM x-vector checkpoint raises ValueError at once, before any weights load.
    """
    key = (None if model is None else str(Path(model).resolve()), device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = ResemblyzerEncoder(device) if model is None else WavLMEncoder(model, device)
        return _CACHE[key]
