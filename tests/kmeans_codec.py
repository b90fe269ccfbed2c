"""A real codec for the generic family's tests: the built-in model's shipped log-mel k-means tokenizer
(4,096 codes, 100 a second) with Griffin-Lim, behind the generic family's `encode:`/`decode:` hooks."""
from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from spade_tts.codec.tokenizer import SpeechTokenizer
    from spade_tts.families import BUILTIN_MODEL

    return SpeechTokenizer.load(BUILTIN_MODEL)


def encode(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    from spade_tts.audio import to_mono_16k

    return _tokenizer().encode(to_mono_16k(np.asarray(audio, dtype=np.float32), sample_rate))


def decode(codes: np.ndarray) -> tuple[np.ndarray, int]:
    return _tokenizer().decode(np.asarray(codes).tolist()), 16000
