"""Objective scores for TTS output: intelligibility (WER), voice (speaker similarity), quality (predicted MOS).

Each scorer has an offline default (Whisper tiny.en, resemblyzer, DNSMOS) and takes a local
model folder for the paper-comparable or user-trusted alternative (see docs/scoring.md).
Importing this package is cheap: Whisper, resemblyzer, transformers and the DNSMOS models load on first use.
"""
from spade_tts.scoring.dnsmos import dnsmos
from spade_tts.scoring.mos import DNSMOSPredictor, HFMOSPredictor, get_mos_predictor
from spade_tts.scoring.speaker import ResemblyzerEncoder, SpeakerEncoder, WavLMEncoder, cosine, get_speaker_encoder
from spade_tts.scoring.wer import Transcriber, cer, detect_backend, get_transcriber, mean_wer, wer, word_errors

__all__ = [
    "DNSMOSPredictor",
    "HFMOSPredictor",
    "ResemblyzerEncoder",
    "SpeakerEncoder",
    "Transcriber",
    "WavLMEncoder",
    "cer",
    "cosine",
    "detect_backend",
    "dnsmos",
    "get_mos_predictor",
    "get_speaker_encoder",
    "get_transcriber",
    "mean_wer",
    "wer",
    "word_errors",
]
