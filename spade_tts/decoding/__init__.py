"""Fast autoregressive decoding for Hugging Face decoder-only LMs (see docs/decoding.md)."""
from spade_tts.decoding.static_decoder import SUPPORTED_MODEL_TYPES, StaticDecoder, generate_greedy

__all__ = ["StaticDecoder", "generate_greedy", "SUPPORTED_MODEL_TYPES"]
