"""A real codec for the generic family's tests: the built-in model's shipped tokenizer (FSQ, 15,360 codes,
50 a second, Griffin-Lim), behind the generic family's `encode:`/`decode:` hooks."""
from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from spade_tts.codec import load_tokenizer
    from spade_tts.families import BUILTIN_MODEL

    return load_tokenizer(BUILTIN_MODEL)


def encode(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    from spade_tts.audio import to_mono_16k

    return _tokenizer().encode(to_mono_16k(np.asarray(audio, dtype=np.float32), sample_rate))


def decode(codes: np.ndarray) -> tuple[np.ndarray, int]:
    return _tokenizer().decode(np.asarray(codes).tolist()), 16000
