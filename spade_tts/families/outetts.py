"""OuteTTS 1.0 (OuteAI, Llama-OuteTTS-1.0-1B): a Llama-3.2-1B LM speaking DAC 24 kHz codes, 2 codebooks.

Layout: the Llama-3 text vocabulary, then OuteTTS' added tokens: the codes ``<|c1_0|>`` .. ``<|c1_1023|>`` and
``<|c2_0|>`` .. ``<|c2_1023|>`` (two adjacent blocks; upstream also has an unused ``<|c1_1024|>``), markers
(``<|im_start|>``, ``<|text_start|>``, ``<|audio_start|>``, ``<|word_start|>``, ``<|features|>``, ``<|code|>``,
``<|global_features_start|>`` ...), time tokens ``<|t_0.00|>`` .. and feature tokens ``<|energy_N|>``,
``<|spectral_centroid_N|>``, ``<|pitch_N|>`` (N in 0..100). Ids are read from the checkpoint's tokenizer. One DAC
frame (75 frames/s) is ``<|c1_a|><|c2_b|>``; codes are ``(2, frames)`` arrays (row 0 codebook 1, row 1 codebook 2).

Sequences follow upstream's v1.0 prompt processor (edwko/OuteTTS, interface version 3), checked token by token in
tests/test_family_outetts.py:

* text: ``<|im_start|>\\n<|text_start|>TEXT<|text_end|>\\n<|audio_start|>\\n`` with TEXT normalized as upstream
  does; with a voice prompt TEXT is the speaker's text, ``". "`` unless it ends a sentence, then the target text;
* speech, word by word, words joined by ``\\n``: ``<|word_start|>WORD<|features|><|t_D.DD|><|energy_E|>
  <|spectral_centroid_C|><|pitch_P|><|code|>`` + the word's frames + ``<|word_end|>``. D is the word's frame
  count / 75; E, C, P are the word audio's RMS energy, spectral centroid and autocorrelation pitch, each mapped to
  0..1 and bucketed to round(100 x value) (:func:`audio_features`);
* training sample (one utterance, upstream's ``get_training_prompt``): text part, ``<|global_features_start|>`` +
  the whole utterance's E, C, P tokens + ``<|global_features_end|>\\n``, the word blocks, then
  ``\\n<|audio_end|>\\n<|im_end|>\\n``; loss on everything after ``<|audio_start|>\\n``;
* synthesis prompt with a voice (``get_completion_prompt``): text part, the speaker's word blocks (its last word
  carries the sentence separator), then ``\\n<|word_start|>``; the model writes each next word's text, features,
  ``<|code|>``, frames and ``<|word_end|>`` itself, and ``<|audio_end|>`` at the end.

Word blocks need word timings (upstream: Whisper word timestamps) and, for the feature tokens, the audio.
Generation follows the word-block grammar with a mask that sees what was generated (:meth:`token_mask`); only
the c1/c2 codes reach the codec.
"""
from __future__ import annotations

import itertools
import re
import unicodedata
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from spade_tts.families.base import GenerationConfig, SpeechLayout, Utterance, Word
from spade_tts.families.codec_hooks import cached, codec_weights, load_codec, require
from spade_tts.families.hf import HFSpeechLM, read_config, tokenizer_vocab

CODEBOOK = 1024
SAMPLE_RATE = 24000
FRAMES_PER_SECOND = 75  # DAC 24 kHz, hop 320
HOP = SAMPLE_RATE // FRAMES_PER_SECOND
# upstream's DacInterface: loudness of what is encoded and decoded, encoder windows, decoder pieces and their fades
LOUDNESS_LUFS, PEAK_DBFS, LOUDNESS_BLOCK_S = -18.0, -1.0, 0.4
ENCODE_WINDOW_S, DECODE_CHUNK, FADE_S = 5.0, 2048, 0.015
EDGE_FRAMES = 20  # upstream widens the first word's start and the last word's end by up to 20 frames
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TEXT_START, TEXT_END = "<|text_start|>", "<|text_end|>"
AUDIO_START, AUDIO_END = "<|audio_start|>", "<|audio_end|>"
WORD_START, WORD_END, FEATURES, CODE = "<|word_start|>", "<|word_end|>", "<|features|>", "<|code|>"
GLOBAL_START, GLOBAL_END = "<|global_features_start|>", "<|global_features_end|>"
SPACE = "<|space|>"  # OuteTTS 0.2/0.3 only; not used by 1.0
# what the v1.0 sequences use (upstream outetts/version/v3/tokens.py)
MARKERS = (IM_START, IM_END, TEXT_START, TEXT_END, AUDIO_START, AUDIO_END, WORD_START, WORD_END, FEATURES, CODE,
           GLOBAL_START, GLOBAL_END)
FEATURE_NAMES = ("energy", "spectral_centroid", "pitch")  # in the order upstream writes them
# OuteTTS 1.0's codec: IBM's speech DAC (24 kHz, 1.5 kbps, 2 codebooks), as upstream's DacInterface downloads it
DAC_REPO, DAC_FILE = "ibm-research/DAC.speech.v1.0", "weights_24khz_1.5kbps_v1.0.pth"
WORDS_MISSING = ("OuteTTS 1.0 training sequences need word timings: add `words` [{word,start,end}] (seconds) to "
                 "each manifest row (e.g. from Whisper word timestamps, as upstream does)")
_TIME = re.compile(r"<\|t_\d+\.\d\d\|>")
_FEATURE = {name: re.compile(rf"<\|{name}_\d+\|>") for name in FEATURE_NAMES}


def c1_token(k: int) -> str:
    return f"<|c1_{k}|>"


def c2_token(k: int) -> str:
    return f"<|c2_{k}|>"


def time_token(frames: int) -> str:
    """A word's duration token: its frame count in seconds, rounded to 2 decimals (``<|t_0.20|>``)."""
    return f"<|t_{round(frames / FRAMES_PER_SECOND, 2):.2f}|>"


def feature_tokens(features: dict | None) -> str:
    """``<|energy_E|><|spectral_centroid_C|><|pitch_P|>``; a missing value is 0, as upstream's default."""
    features = features or {}
    return "".join(f"<|{name}_{int(features.get(name, 0))}|>" for name in FEATURE_NAMES)


# -- text, as upstream's v1.0 prompt processor normalizes it -------------------------------------------------------
_NORMALIZE = [  # (pattern, replacement), applied in order after NFKC
    (r"…", "..."), (r"\.{2,}", "..."),
    (r"[“”„‟«»]", '"'), (r"[‘’‛‹›`´]", "'"),
    (r"[–—―−‐]", "-"), (r"-{2,}", "-"),
    (r"[\x00-\x1F\x7F-\x9F\u00AD\u200B-\u200D\uFEFF]", ""),
    (r"\s+", " "),
    (r"\s+([,.?!:;])", r"\1"),  # no space before punctuation
    (r"([,.?!:;])(?=[^\s,.?!:;])", r"\1 "),  # one after it
    (r"(\w)\s+'\s*(\w)", r"\1'\2"), (r"(\w)\s+'\s*([,.?!:;\s]|$)", r"\1'\2"),
]
_CONTRACTION = re.compile(r"(\w)\s*'\s*([tsdmre])\b", re.IGNORECASE)


def normalize_text(text: str) -> str:
    """The text as OuteTTS 1.0 writes it between ``<|text_start|>`` and ``<|text_end|>`` (ftfy's repair runs
    first when the ``ftfy`` package is installed, as upstream requires it)."""
    text = "" if text is None else str(text)
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = unicodedata.normalize("NFKC", text)
    for pattern, repl in _NORMALIZE:
        text = re.sub(pattern, repl, text)
    text = _CONTRACTION.sub(r"\1'\2", text)
    text = re.sub(r"([?!])\1+", r"\1", text)
    text = re.sub(r"\s+", " ", text)
    return text.replace('"', "").strip()


def _is_cjk(text: str) -> bool:
    return any("\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff" for c in text)


def merge_speaker_text(text: str, speaker_text: str) -> tuple[str, str]:
    """(the prompt's text, the separator added to the speaker's last word): the speaker's text, ``". "`` (CJK:
    ``"。"``) unless it already ends a sentence (then a space; CJK: nothing), then the target text."""
    speaker_text, text = speaker_text.strip(), text.strip()
    if not speaker_text:
        return text, ""
    if _is_cjk(speaker_text):
        sep = "" if speaker_text[-1] in "。？！?!" else "。"
    else:
        sep = " " if speaker_text[-1] in ".?!" else ". "
    return speaker_text + sep + text, sep.strip()


def merge_texts(speaker_text: str, text: str) -> str:
    """The merged prompt text only (see :func:`merge_speaker_text`)."""
    return merge_speaker_text(text, speaker_text)[0]


# -- acoustic features, as upstream's v1.0 audio processor computes them ----------------------------------------
def _mean_pitch(x: np.ndarray, sr: int, fmin: float = 75.0, fmax: float = 600.0, frame: int = 400, hop: int = 160,
                threshold: float = 0.3) -> float:
    """Mean autocorrelation pitch over 400-sample Hann frames (hop 160), unvoiced frames counted as ``fmin``,
    mapped to 0..1 over [fmin, fmax]."""
    x = np.pad(x, (0, (frame - len(x) % hop) % hop))
    if len(x) < frame:  # upstream cannot frame audio shorter than one frame; pad it to one
        x = np.pad(x, (0, frame - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame) / frame)  # periodic Hann (torch.hann_window)
    spec = np.fft.rfft(frames * window, n=2 * frame, axis=1)
    ac = np.fft.irfft(spec.real ** 2 + spec.imag ** 2, axis=1)[:, :frame]
    lo, hi = max(1, int(sr / fmax)), min(frame, int(sr / fmin))
    k = np.argmax(ac[:, lo:hi], axis=1)
    rows = np.arange(len(ac))
    peak, lag = ac[rows, lo + k], lo + k
    i = np.clip(lag, 1, frame - 2)
    a, b, c = ac[rows, i - 1], ac[rows, i], ac[rows, i + 1]
    delta = np.where((lag > 0) & (lag < frame - 1), 0.5 * (a - c) / (a - 2 * b + c + 1e-8), 0.0)
    period = (lag + delta) / sr
    with np.errstate(divide="ignore"):
        pitch = np.where(period > 0, 1.0 / np.where(period > 0, period, 1.0), 0.0)
    pitch = np.where(peak / (ac[:, 0] + 1e-8) > threshold, pitch, 0.0)
    pitch = np.clip(pitch, fmin, fmax)
    return float(np.clip((pitch.mean() - fmin) / (fmax - fmin), 0.0, 1.0))


def audio_features(audio: np.ndarray, sample_rate: int) -> dict[str, int]:
    """OuteTTS 1.0's features of a stretch of audio, each in 0..1 and bucketed to ``round(100 x value)``:
    RMS energy, spectral centroid / Nyquist (magnitude spectrum of the whole stretch), mean pitch
    (:func:`_mean_pitch`). Empty or non-finite audio gives 0s, as upstream."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.isfinite(x).all():
        return {name: 0 for name in FEATURE_NAMES}
    mag = np.abs(np.fft.rfft(x))
    freqs = np.linspace(0.0, sample_rate / 2, len(mag))
    values = {"energy": float(np.sqrt(np.mean(x ** 2))),
              "spectral_centroid": float((freqs * mag).sum() / (mag.sum() + 1e-10) / (sample_rate / 2)),
              "pitch": _mean_pitch(x, sample_rate)}
    return {name: round(values[name] * 100) for name in FEATURE_NAMES}


def word_frames(words: list[Word], frames: int) -> list[tuple[int, int]]:
    """Each word's frame span ``[start, end)`` as upstream cuts the codes: a word runs from the previous word's
    end to its own end (``int(end x 75)``), the first starts ``EDGE_FRAMES`` early, the last ends ``EDGE_FRAMES``
    late (clamped to the codes). Unlike upstream, a span never runs backwards (overlapping timings give empty
    words instead of repeated frames)."""
    spans, start = [], None
    for n, w in enumerate(words):
        if start is None:
            start = min(frames, max(0, int(w.start * FRAMES_PER_SECOND) - EDGE_FRAMES))
        if n == len(words) - 1:
            end = min(frames, int(w.end * FRAMES_PER_SECOND) + EDGE_FRAMES)
        else:
            end = min(frames, int(w.end * FRAMES_PER_SECOND))
        end = max(start, end)
        spans.append((start, end))
        start = end
    return spans


def spread_words(text: str, frames: int) -> list[tuple[str, int, int]]:
    """No timings: the text's words with the frames shared in proportion to their lengths (an approximation)."""
    words = text.split()
    if not words:
        return []
    bounds = np.round(np.cumsum([0] + [len(w) for w in words]) / sum(len(w) for w in words) * frames).astype(int)
    return [(w, int(bounds[i]), int(bounds[i + 1])) for i, w in enumerate(words)]


# token categories the generation grammar works with
(_TEXT, _NL, _C1, _C2, _WS, _WE, _FEAT, _CODE, _T, _EN, _SC, _PI, _GFS, _GFE, _STOP, _AUDIO_START,
 _OTHER) = range(17)
_VALUE_CATS = (_T, _EN, _SC, _PI)


class OuteTTSSpeechLM(HFSpeechLM):
    family = "outetts"
    uses_prompt = False  # upstream trains on single utterances (get_training_prompt); use_prompt=True for cloning
    wants_audio = True  # the feature tokens are computed from a row's audio even where it gives codes
    max_word_tokens = 16  # generation: a word's text is at most this many tokens before <|features|> must come

    @classmethod
    def detect(cls, path: Path) -> bool:
        if read_config(path).get("model_type") not in ("llama", "qwen3"):  # 1.0-1B: Llama-3.2, 1.0-0.6B: Qwen3
            return False
        vocab = tokenizer_vocab(path)
        return c1_token(0) in vocab and c2_token(0) in vocab

    @classmethod
    def _ids(cls, tokenizer) -> dict[str, int]:
        names = MARKERS + (c1_token(0), c1_token(CODEBOOK - 1), c2_token(0), c2_token(CODEBOOK - 1))
        ids = {n: tokenizer.convert_tokens_to_ids(n) for n in names}
        unk = getattr(tokenizer, "unk_token_id", None)
        missing = [n for n, i in ids.items() if i is None or (unk is not None and i == unk)]
        if missing:
            raise ValueError(f"this tokenizer has no {missing[0]}: not an OuteTTS 1.0 tokenizer "
                             "(pass the right --family)")
        for tok in (c1_token, c2_token):
            if ids[tok(CODEBOOK - 1)] != ids[tok(0)] + CODEBOOK - 1:
                raise ValueError(f"OuteTTS {tok(0)}..{tok(CODEBOOK - 1)} must be {CODEBOOK} contiguous ids")
        # upstream maps <|c1_0|>..<|c1_1024|> (range(1025)); a tokenizer may carry the unused 1025th code
        if abs(ids[c2_token(0)] - ids[c1_token(0)]) not in (CODEBOOK, CODEBOOK + 1):
            raise ValueError("OuteTTS c1 and c2 code blocks must be adjacent (one speech range of 2048 ids)")
        return {k: int(v) for k, v in ids.items()}

    @classmethod
    def _value_tokens(cls, tokenizer) -> dict[int, list[int]]:
        """Ids of the time tokens and of each feature's tokens the tokenizer has (category -> ids)."""
        out: dict[int, list[int]] = {c: [] for c in _VALUE_CATS}
        pats = ((_T, _TIME), (_EN, _FEATURE["energy"]), (_SC, _FEATURE["spectral_centroid"]),
                (_PI, _FEATURE["pitch"]))
        for tok, i in tokenizer.get_vocab().items():
            if tok.startswith("<|"):
                for cat, pat in pats:
                    if pat.fullmatch(tok):
                        out[cat].append(int(i))
        return {c: sorted(v) for c, v in out.items()}

    @classmethod
    def _text_ids(cls, tokenizer, below: int) -> list[int]:
        """Ordinary text ids (what a word is written with): ids under ``below`` that are no added token."""
        added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        return [i for i in range(below) if i not in added]

    @classmethod
    def _newline(cls, tokenizer) -> list[int]:
        return list(tokenizer("\n", add_special_tokens=False)["input_ids"])

    @classmethod
    def make_layout(cls, tokenizer, config) -> SpeechLayout:
        ids = cls._ids(tokenizer)
        first, last = sorted((ids[c1_token(0)], ids[c2_token(0)]))
        vocab = int(getattr(config, "vocab_size", 0) or 0) or None
        words = [ids[n] for n in (WORD_START, WORD_END, FEATURES, CODE, GLOBAL_START, GLOBAL_END)]
        values = [i for v in cls._value_tokens(tokenizer).values() for i in v]
        text = cls._text_ids(tokenizer, min([first] + list(ids.values())))
        extra = sorted({i for i in words + values + text + cls._newline(tokenizer) if vocab is None or i < vocab})
        return SpeechLayout(first, last + CODEBOOK, (ids[AUDIO_END], ids[IM_END]), tuple(extra))

    @classmethod
    def from_pretrained(cls, path, dtype="auto", device: str = "cpu") -> "OuteTTSSpeechLM":
        speech = super().from_pretrained(path, dtype=dtype, device=device)
        speech.ids = cls._ids(speech.tokenizer)
        speech.c1, speech.c2 = speech.ids[c1_token(0)], speech.ids[c2_token(0)]
        speech.nl = cls._newline(speech.tokenizer)
        speech.values = cls._value_tokens(speech.tokenizer)
        speech._piece_cache, speech._mask_cache = {}, None
        return speech

    # -- sequences ----------------------------------------------------------------------------------------
    def _text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _piece(self, text: str) -> list[int]:
        """Tokenized special-token strings (time and feature tokens), cached."""
        if text not in self._piece_cache:
            self._piece_cache[text] = self._text(text)
        return self._piece_cache[text]

    def _head(self, text: str) -> list[int]:
        i, nl = self.ids, self.nl
        return [i[IM_START]] + nl + [i[TEXT_START]] + self._text(text) + [i[TEXT_END]] + nl + [i[AUDIO_START]] + nl

    def _block(self, word: str, codes: np.ndarray, features: dict | None) -> list[int]:
        """``<|word_start|>WORD<|features|><|t_..|><|energy_..|>...<|code|>`` frames ``<|word_end|>``."""
        i = self.ids
        return ([i[WORD_START]] + self._text(word) + [i[FEATURES]]
                + self._piece(time_token(codes.shape[1]) + feature_tokens(features)) + [i[CODE]]
                + self.codes_to_ids(codes) + [i[WORD_END]])

    def _join(self, blocks: list[list[int]]) -> list[int]:
        out: list[int] = []
        for n, b in enumerate(blocks):
            out += (self.nl if n else []) + b
        return out

    def _word_blocks(self, utt_words, codes: np.ndarray, text: str, last_suffix: str = "",
                     require_timings: bool = True) -> list[list[int]]:
        """The utterance's word blocks: its timings cut the codes (or, for a voice prompt without timings, the
        frames spread over the text's words)."""
        codes = self._check_codes(codes)
        if utt_words:
            items = [(w.word.strip(), codes[:, a:b], w.features)
                     for w, (a, b) in zip(utt_words, word_frames(list(utt_words), codes.shape[1]))]
        elif require_timings:
            raise ValueError(WORDS_MISSING)
        else:
            items = [(w, codes[:, a:b], None) for w, a, b in spread_words(text, codes.shape[1])]
        if not items:
            raise ValueError("an OuteTTS voice prompt needs its text (the words spoken in it)")
        if last_suffix:
            items[-1] = (items[-1][0] + last_suffix,) + items[-1][1:]
        return [self._block(*item) for item in items]

    def prompt_ids(self, text: str, prompt_text: str = "", prompt_codes: np.ndarray | None = None, *,
                   prompt: Utterance | None = None) -> list[int]:
        """Upstream's completion prompt. A voice prompt is ``prompt`` (an Utterance, with word timings and features
        for the exact layout) or ``prompt_text`` + ``prompt_codes``: then its frames are shared among its words
        by their lengths and the feature tokens are 0 (no timings, no audio), an approximation of upstream."""
        words = None
        if prompt is not None:
            prompt_text, prompt_codes, words = prompt.text, prompt.codes, prompt.words
        text = normalize_text(text)
        if prompt_codes is None or not np.asarray(prompt_codes).size:
            return self._head(text)
        speaker_text = normalize_text(prompt_text)
        merged, sep = merge_speaker_text(text, speaker_text)
        if not words:
            warnings.warn("OuteTTS voice prompt without word timings: its frames are shared among its words by "
                          "length and its feature tokens are 0 (pass prompt=Utterance(..., words=[...]) for "
                          "upstream's exact layout)", stacklevel=2)
        blocks = self._word_blocks(words, prompt_codes, speaker_text, sep, require_timings=False)
        return self._head(merged) + self._join(blocks) + self.nl + [self.ids[WORD_START]]

    def _check_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] != 2:
            raise ValueError(f"OuteTTS codes are (2, frames) DAC codes, got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= CODEBOOK):
            raise ValueError(f"DAC codes must be in [0, {CODEBOOK}), got {codes.min()}..{codes.max()}")
        return codes

    def codes_to_ids(self, codes: np.ndarray) -> list[int]:
        codes = self._check_codes(codes)
        return np.stack([codes[0] + self.c1, codes[1] + self.c2], axis=1).reshape(-1).tolist()

    def ids_to_codes(self, ids: list[int]) -> np.ndarray:
        """Generated ids -> ``(2, frames)``: the c1/c2 codes only (word text, markers, time and feature tokens
        skipped), cut at the first stop; a trailing lone c1 is dropped."""
        ids = np.asarray(self.speech_ids(list(ids)), dtype=np.int64)
        pairs = ids[: len(ids) // 2 * 2].reshape(-1, 2)
        codes = np.stack([pairs[:, 0] - self.c1, pairs[:, 1] - self.c2]) if len(pairs) else np.zeros((2, 0), np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= CODEBOOK):
            raise ValueError("speech ids do not alternate <|c1_*|>, <|c2_*|> as OuteTTS frames do")
        return codes

    def training_sequence(self, target: Utterance, prompt: Utterance | None = None) -> tuple[list[int], int]:
        """Without ``prompt``: upstream's training sample (global features, word blocks), loss after
        ``<|audio_start|>\\n``. With ``prompt``: the cloning layout, the speaker's completion prompt continued by the
        target's word blocks, loss from the target's first word. Both end ``\\n<|audio_end|>\\n<|im_end|>\\n``."""
        i, nl = self.ids, self.nl
        if not target.words:
            raise ValueError(WORDS_MISSING)
        tail = nl + [i[AUDIO_END]] + nl + [i[IM_END]] + nl
        if prompt is None:
            head = self._head(normalize_text(target.text))
            glob = [i[GLOBAL_START]] + self._piece(feature_tokens(target.features)) + [i[GLOBAL_END]] + nl
            body = self._join(self._word_blocks(target.words, target.codes, target.text))
            return head + glob + body + tail, len(head) - 1
        if not prompt.words:
            raise ValueError(WORDS_MISSING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = self.prompt_ids(target.text, prompt=prompt)
        blocks = self._word_blocks(target.words, target.codes, target.text)
        blocks[0] = blocks[0][1:]  # its <|word_start|> ends the prompt
        return head + self._join(blocks) + tail, len(head) - 1

    def prepare_utterance(self, utt: Utterance, audio: np.ndarray | None = None, sample_rate: int = 0) -> Utterance:
        """Word timings are required; with the row's audio, the global and per-word features are computed from
        it (at 24 kHz, as upstream; features the manifest gives are kept). Without audio, features stay as the
        manifest gives them, else 0 (upstream's default): they cannot be computed from DAC codes without decoding."""
        if not utt.words:
            raise ValueError(WORDS_MISSING)
        if audio is None:
            if utt.features is None or any(w.features is None for w in utt.words):
                warnings.warn("OuteTTS rows with codes but no audio: their energy/spectral-centroid/pitch tokens are "
                              "0 (upstream's default for a missing feature); add \"audio\" next to \"codes\" to "
                              "compute them", stacklevel=2)
            return utt
        from spade_tts.audio import resample, to_mono

        wav = resample(to_mono(np.asarray(audio, dtype=np.float32)), int(sample_rate), SAMPLE_RATE)
        words = [w if w.features is not None else
                 replace(w, features=audio_features(wav[int(w.start * SAMPLE_RATE):int(w.end * SAMPLE_RATE)],
                                                    SAMPLE_RATE)) for w in utt.words]
        feats = utt.features if utt.features is not None else audio_features(wav, SAMPLE_RATE)
        return replace(utt, words=words, features=feats)

    # -- generation ------------------------------------------------------------------------------------------
    def generation_defaults(self, **overrides) -> GenerationConfig:
        """OuteTTS 1.0's recommended sampler (model card, upstream's SamplerConfig): temperature 0.4, top-k 40,
        top-p 0.9, min-p 0.05, repetition penalty 1.1 over the last 64 tokens only."""
        cfg = dict(temperature=0.4, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1, repetition_window=64,
                   max_new_tokens=4096)
        return GenerationConfig(**{**cfg, **overrides})

    def _category(self, t: int) -> int:
        i = self.ids
        if self.c1 <= t < self.c1 + CODEBOOK:
            return _C1
        if self.c2 <= t < self.c2 + CODEBOOK:
            return _C2
        if self._cat_of is None:
            cat = {i[WORD_START]: _WS, i[WORD_END]: _WE, i[FEATURES]: _FEAT, i[CODE]: _CODE, i[GLOBAL_START]: _GFS,
                   i[GLOBAL_END]: _GFE, i[AUDIO_END]: _STOP, i[IM_END]: _STOP, i[AUDIO_START]: _AUDIO_START}
            for c, ids in self.values.items():
                cat.update({v: c for v in ids})
            for m in (IM_START, TEXT_START, TEXT_END):
                cat[i[m]] = _OTHER
            cat.update({n: _NL for n in self.nl})
            self._cat_of = cat
        return self._cat_of.get(t, _TEXT)

    _cat_of = None

    def _next_categories(self, context) -> tuple[int, ...] | None:
        """The categories the word-block grammar allows after ``context`` (ids, newest first); None = anything."""
        have = [c for c in _VALUE_CATS if self.values.get(c)]
        n_text, saw_nl, seen = 0, False, []
        for t in context:
            c = self._category(t)
            if c == _TEXT:
                n_text += 1
            elif c == _NL:
                saw_nl = True
            else:
                seen.append(c)
                if c not in _VALUE_CATS or len(seen) > len(_VALUE_CATS):
                    break
        if not seen:
            return None
        last = seen[0]
        if last == _STOP:
            return None
        if last == _WS:
            return (_TEXT,) if n_text == 0 else (_FEAT,) if n_text >= self.max_word_tokens else (_TEXT, _FEAT)
        if last in (_FEAT, _GFS) or last in _VALUE_CATS:
            opener = next((c for c in seen if c in (_FEAT, _GFS)), _FEAT)
            order = [c for c in have if opener == _FEAT or c != _T]
            after = order[order.index(last) + 1:] if last in order else order
            return (after[0],) if after else ((_CODE,) if opener == _FEAT else (_GFE,))
        if last == _CODE:
            return (_C1,)
        if last == _C1:
            return (_C2,)
        if last == _C2:
            return (_C1, _WE)
        if last in (_WE, _GFE, _AUDIO_START):
            if self.nl and not saw_nl:
                return (_NL,)
            return {_WE: (_WS, _STOP), _GFE: (_WS,), _AUDIO_START: (_GFS, _WS)}[last]
        return None

    def token_mask(self, step: int, rows: torch.Tensor, prompts: list[list[int]],
                   generated: list[list[int]]) -> torch.Tensor:
        """Per sequence, the rows the word-block grammar allows next: after ``<|word_start|>`` word text (at most
        ``max_word_tokens``) then ``<|features|>``, a time token and the feature tokens in upstream's order,
        ``<|code|>``, c1/c2 frames, ``<|word_end|>``, ``\\n``, then the next ``<|word_start|>`` or a stop
        (``<|audio_end|>``/``<|im_end|>``). A prompt ending in ``<|audio_start|>\\n`` may start with the global
        features block. Stops come only after a whole word, so every frame the codec gets is complete."""
        if self._mask_cache is None or self._mask_cache[0] is not rows:
            cats = torch.tensor([self._category(r) for r in rows.tolist()])
            self._mask_cache = (rows, cats, {})
        _, cats, by_state = self._mask_cache
        out = []
        for prompt, new in zip(prompts, generated):
            allowed = self._next_categories(itertools.chain(reversed(new), reversed(prompt)))
            if allowed not in by_state:
                m = torch.isin(cats, torch.tensor(allowed)) if allowed is not None else torch.ones(len(cats), dtype=bool)
                by_state[allowed] = m if bool(m.any()) else torch.ones(len(cats), dtype=torch.bool)
            out.append(by_state[allowed])
        return torch.stack(out)

    def random_codes(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, CODEBOOK, size=(2, frames))

    # -- codec ----------------------------------------------------------------------------------------------
    #: an already-built ``dac.DAC`` for the codec hooks to use instead of loading weights (a random-init one in the
    #: tests, or one the caller loaded itself)
    codec_model = None

    def codec(self):
        """``codec_model``, else IBM's DAC.speech.v1.0 (``descript-audio-codec`` code), loaded once from SPADE_DAC
        (the local .pth file) or the HF cache."""
        if self.codec_model is not None:
            return self.codec_model
        what = f"{DAC_FILE} (from {DAC_REPO})"
        path = codec_weights("SPADE_DAC", DAC_REPO, "OuteTTS", what)
        dac = require("dac", "descript-audio-codec", "OuteTTS (DAC 24 kHz)")
        if path == DAC_REPO:
            hub = require("huggingface_hub", "huggingface_hub", "OuteTTS (DAC.speech.v1.0 weights)",
                          purpose=f"find {DAC_REPO}/{DAC_FILE} (or set SPADE_DAC to that file)")
            path = load_codec(lambda _: hub.hf_hub_download(repo_id=DAC_REPO, filename=DAC_FILE), DAC_REPO,
                              "SPADE_DAC", "OuteTTS (DAC 24 kHz)", what)
        return cached(("outetts", str(path)), lambda: dac.DAC.load(str(path)).eval())

    @staticmethod
    def _check_codec(codec):
        """OuteTTS 1.0 speaks a 24 kHz DAC at 75 frames/s (hop 320); another DAC's codes would be other sounds."""
        rate, hop = int(getattr(codec, "sample_rate", SAMPLE_RATE)), int(getattr(codec, "hop_length", HOP))
        if (rate, hop) != (SAMPLE_RATE, HOP):
            raise ValueError(f"OuteTTS 1.0 needs a 24 kHz DAC with hop {HOP} (75 frames/s); this DAC runs at {rate} Hz "
                             f"with hop {hop}: load {DAC_REPO}/{DAC_FILE}")
        return codec

    def encode_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """``(2, frames)`` codes, as upstream's DacInterface.encode makes them: the 24 kHz audio normalized to -18
        LUFS (peaks at most -1 dBFS), encoded in 5 s windows, the first two codebooks kept."""
        from spade_tts.audio import resample, to_mono

        codec = self._check_codec(self.codec())
        dev = next(codec.parameters()).device
        wav = normalize_loudness(resample(to_mono(audio), sample_rate, SAMPLE_RATE), SAMPLE_RATE)
        window = int(ENCODE_WINDOW_S * FRAMES_PER_SECOND) * HOP
        codes = []
        with torch.no_grad():
            for a in range(0, len(wav), window):
                chunk = torch.from_numpy(wav[a:a + window]).float().reshape(1, 1, -1).to(dev)
                _, c, *_ = codec.encode(codec.preprocess(chunk, SAMPLE_RATE))
                codes.append(c[0, :2].cpu().numpy())
        return np.concatenate(codes, axis=1).astype(np.int64) if codes else np.zeros((2, 0), np.int64)

    def decode_audio(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        """``(2, frames)`` codes -> 24 kHz audio (~320 samples a frame), as upstream's DacInterface.decode: 2,048
        frames at a time, each piece faded in and out over 15 ms, the whole normalized like the encoder's input."""
        codes = self._check_codes(codes)
        codec = self._check_codec(self.codec())
        dev = next(codec.parameters()).device
        pieces = []
        with torch.no_grad():
            for a in range(0, codes.shape[1], DECODE_CHUNK):
                z = codec.quantizer.from_codes(torch.from_numpy(codes[:, a:a + DECODE_CHUNK])[None].to(dev))[0]
                pieces.append(_fade(codec.decode(z).reshape(-1).float().cpu().numpy(), SAMPLE_RATE))
        wav = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        return normalize_loudness(wav, SAMPLE_RATE), SAMPLE_RATE


def normalize_loudness(wav: np.ndarray, sr: int) -> np.ndarray:
    """``wav`` at -18 LUFS with peaks at most -1 dBFS, as upstream treats what DAC encodes and decodes (pyloudnorm,
    which descript-audio-codec's audiotools requires, on at least one 0.4 s block); silence is left as it is."""
    pyln = require("pyloudnorm", "pyloudnorm", "OuteTTS (DAC 24 kHz)", purpose="normalize loudness as upstream does")
    wav = np.asarray(wav, dtype=np.float64)
    if not len(wav):
        return wav.astype(np.float32)
    padded = np.pad(wav, (0, max(0, int(LOUDNESS_BLOCK_S * sr) - len(wav))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "possible clipped samples": the peak limit below takes care of them
        loudness = pyln.Meter(sr, block_size=LOUDNESS_BLOCK_S).integrated_loudness(padded)
        if not np.isfinite(loudness):
            return wav.astype(np.float32)
        out = pyln.normalize.loudness(padded, loudness, LOUDNESS_LUFS)[: len(wav)]
    peak, limit = float(np.abs(out).max()), 10 ** (PEAK_DBFS / 20)
    if peak > limit:
        out = out * (limit / peak)
    return out.astype(np.float32)


def _fade(wav: np.ndarray, sr: int) -> np.ndarray:
    """Linear 15 ms fade in and out (at most half the piece each), as upstream applies to every decoded piece."""
    n = min(int(FADE_S * sr), len(wav) // 2)
    if n:
        wav[:n] *= np.linspace(0.0, 1.0, n, dtype=wav.dtype)
        wav[len(wav) - n:] *= np.linspace(1.0, 0.0, n, dtype=wav.dtype)
    return wav
