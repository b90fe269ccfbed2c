"""Predicted MOS: DNSMOS offline by default, or the user's own learned predictor.

DNSMOS was trained on ratings of noisy and enhanced speech; predictors trained on listening
tests of synthetic speech (UTMOS and its kin) follow TTS quality more closely, so use one
where you have it. Such a predictor fine-tuned in transformers is an audio model with a
one-output regression head, which ``AutoModelForAudioClassification`` loads. Both kinds answer
``score(audio16k) -> dict[str, float]``; ``keys`` says which names come back.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from spade_tts.audio import MIN_SECONDS, AudioError
from spade_tts.scoring.common import (
    SAMPLE_RATE,
    checked_audio,
    load_feature_extractor,
    load_model,
    local_config,
    model_inputs,
)
from spade_tts.scoring.dnsmos import dnsmos

MOS_EXPECTED = (
    "a local transformers audio regression folder (AutoModelForAudioClassification with num_labels=1), or None for DNSMOS"
)


class DNSMOSPredictor:
    """DNSMOS P.808 and OVRL, the two numbers the evaluation reports (see ``dnsmos``)."""

    keys = ("p808", "ovrl")

    def score(self, audio16k: np.ndarray) -> dict[str, float]:
        d = dnsmos(audio16k)
        return {k: d[k] for k in self.keys}


class HFMOSPredictor:
    """The scalar output of a transformers audio regression model, as ``{"mos": value}``."""

    keys = ("mos",)

    def __init__(self, model: str, device: str = "cpu"):
        from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING

        self.model_dir, self.device = str(model), device
        cfg = local_config(model, "MOS", MOS_EXPECTED)
        if type(cfg) not in MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING:
            raise ValueError(
                f"MOS model folder {model} holds model_type {cfg.model_type!r}, which AutoModelForAudioClassification "
                f"cannot load: pass {MOS_EXPECTED}"
            )
        if cfg.num_labels != 1:
            raise ValueError(
                f"MOS model folder {model} has {cfg.num_labels} outputs, not the 1 of a regression head: pass {MOS_EXPECTED}"
            )
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                from transformers import AutoModelForAudioClassification

                fe = load_feature_extractor(self.model_dir, "MOS", MOS_EXPECTED)
                self._model = fe, load_model(AutoModelForAudioClassification, self.model_dir, "MOS", MOS_EXPECTED, self.device)
        return self._model

    def score(self, audio16k: np.ndarray) -> dict[str, float]:
        """Raises AudioError on the clips DNSMOS refuses too, so both predictors score the same items."""
        import torch

        audio = checked_audio(audio16k)
        if audio.size < MIN_SECONDS * SAMPLE_RATE:
            raise AudioError(
                f"audio is {audio.size / SAMPLE_RATE:.2f} s, too short for the MOS predictor (minimum {MIN_SECONDS} s): "
                "score whole utterances, not fragments"
            )
        fe, net = self._load()
        with torch.inference_mode():
            logits = net(**model_inputs(fe, net, audio)).logits
        return {"mos": float(logits.reshape(-1)[0])}


_CACHE: dict[tuple, DNSMOSPredictor | HFMOSPredictor] = {}
_CACHE_LOCK = threading.Lock()


def get_mos_predictor(model: str | None = None, device: str = "cpu") -> DNSMOSPredictor | HFMOSPredictor:
    """DNSMOS for ``model=None``, else the regression model in the local folder ``model``; one shared
    predictor per (model, device). ``device`` applies to transformers models (DNSMOS runs on CPU).
    A folder that is not such a model raises ValueError at once, before any weights load."""
    key = (None, "cpu") if model is None else (str(Path(model).resolve()), device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = DNSMOSPredictor() if model is None else HFMOSPredictor(model, device)
        return _CACHE[key]
