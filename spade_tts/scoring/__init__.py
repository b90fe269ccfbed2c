"""Objective scores for TTS output: intelligibility (WER), voice (speaker similarity), quality (DNSMOS).

Importing this package is cheap: Whisper, resemblyzer and the DNSMOS models load on first use.
"""
from spade_tts.scoring.dnsmos import dnsmos
from spade_tts.scoring.speaker import SpeakerEncoder, cosine, get_speaker_encoder
from spade_tts.scoring.wer import Transcriber, cer, detect_backend, get_transcriber, mean_wer, wer, word_errors

__all__ = [
    "SpeakerEncoder",
    "Transcriber",
    "cer",
    "cosine",
    "detect_backend",
    "dnsmos",
    "get_speaker_encoder",
    "get_transcriber",
    "mean_wer",
    "wer",
    "word_errors",
]
