"""OuteTTS 1.0 (OuteAI, Llama-OuteTTS-1.0-1B): a Llama-3.2-1B LM speaking DAC 24 kHz codes, 2 codebooks.

Layout: the Llama-3 text vocabulary, then OuteTTS' added tokens: markers (``<|im_start|>``,
``<|im_end|>``, ``<|text_start|>``, ``<|text_end|>``, ``<|audio_start|>``, ``<|audio_end|>``,
``<|word_start|>``, ``<|word_end|>``, ``<|space|>``, ``<|code|>``, time/feature tokens ...) and the
codes ``<|c1_0|>`` .. ``<|c1_1023|>`` and ``<|c2_0|>`` .. ``<|c2_1023|>``. Ids are read from the
checkpoint's tokenizer; the two code blocks must be contiguous and adjacent (one speech range of
2,048 ids). One DAC frame (75 frames/s) is two tokens, ``<|c1_a|><|c2_b|>``; codes are ``(2, frames)``
arrays (row 0 codebook 1, row 1 codebook 2), as DAC gives them.

Sequence (SIMPLIFIED, see docs/families/outetts.md): upstream v1.0 writes each word of the speech
as ``<|word_start|>word<|features|><|t_..|><|energy_..|>...<|code|>codes<|word_end|>``, which needs
word timings and acoustic features that (text, codes) alone do not give. This adapter keeps the
upstream frame around it and the codes without the per-word blocks:
``<|im_start|>\\n<|text_start|>`` + words joined by ``<|space|>`` (prompt words, then target words)
+ ``<|text_end|>\\n<|audio_start|>\\n`` + prompt codes (interleaved c1, c2), the model continues with
codes and ends with ``<|audio_end|>`` (``<|im_end|>`` also stops). Generation alternates c1 and c2
positions; a stop may only come at a frame boundary.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from spade_tts.families.base import SpeechLayout, Utterance
from spade_tts.families.codec_hooks import require
from spade_tts.families.hf import HFSpeechLM, read_config, tokenizer_vocab

CODEBOOK = 1024
SAMPLE_RATE = 24000
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TEXT_START, TEXT_END = "<|text_start|>", "<|text_end|>"
AUDIO_START, AUDIO_END = "<|audio_start|>", "<|audio_end|>"
SPACE = "<|space|>"
# what the v1.0 prompt uses (upstream outetts/version/v3); <|space|> belongs to 0.2/0.3 and is not required
MARKERS = (IM_START, IM_END, TEXT_START, TEXT_END, AUDIO_START, AUDIO_END)
# OuteTTS 1.0's codec: IBM's speech DAC (24 kHz, 1.5 kbps, 2 codebooks), as upstream's DacInterface downloads it
DAC_REPO, DAC_FILE = "ibm-research/DAC.speech.v1.0", "weights_24khz_1.5kbps_v1.0.pth"


def c1_token(k: int) -> str:
    return f"<|c1_{k}|>"


def c2_token(k: int) -> str:
    return f"<|c2_{k}|>"


def merge_texts(speaker_text: str, text: str) -> str:
    """The v1.0 prompt's text: the speaker's text, a sentence break unless it ends one, then the target text
    (upstream ``PromptProcessor.merge_speaker_text``; whitespace collapsed, the rest of upstream's normalization
    (ftfy, NFKC, quotes, dashes) is left to the caller)."""
    speaker_text, text = " ".join(speaker_text.split()), " ".join(text.split())
    if not speaker_text:
        return text
    cjk = any("\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff" for c in speaker_text)
    if cjk:
        sep = "" if speaker_text[-1] in "。？！?!" else "。"
    else:
        sep = " " if speaker_text[-1] in ".?!" else ". "
    return speaker_text + sep + text


class OuteSpeechLM(HFSpeechLM):
    family = "outetts"

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
    def make_layout(cls, tokenizer, config) -> SpeechLayout:
        ids = cls._ids(tokenizer)
        first, last = sorted((ids[c1_token(0)], ids[c2_token(0)]))
        return SpeechLayout(first, last + CODEBOOK, (ids[AUDIO_END], ids[IM_END]))

    @classmethod
    def from_pretrained(cls, path, dtype="auto", device: str = "cpu") -> "OuteSpeechLM":
        speech = super().from_pretrained(path, dtype=dtype, device=device)
        speech.ids = cls._ids(speech.tokenizer)
        speech.c1, speech.c2 = speech.ids[c1_token(0)], speech.ids[c2_token(0)]
        return speech

    # -- sequences ----------------------------------------------------------------------------------------
    def _text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def prompt_ids(self, text: str, prompt_text: str = "", prompt_codes: np.ndarray | None = None) -> list[int]:
        i, nl = self.ids, self._text("\n")
        ids = [i[IM_START]] + nl + [i[TEXT_START]] + self._text(merge_texts(prompt_text, text)) + [i[TEXT_END]] + nl
        ids += [i[AUDIO_START]] + nl
        if prompt_codes is not None and np.asarray(prompt_codes).size:
            ids += self.codes_to_ids(prompt_codes)
        return ids

    def codes_to_ids(self, codes: np.ndarray) -> list[int]:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] != 2:
            raise ValueError(f"OuteTTS codes are (2, frames) DAC codes, got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= CODEBOOK):
            raise ValueError(f"DAC codes must be in [0, {CODEBOOK}), got {codes.min()}..{codes.max()}")
        return np.stack([codes[0] + self.c1, codes[1] + self.c2], axis=1).reshape(-1).tolist()

    def ids_to_codes(self, ids: list[int]) -> np.ndarray:
        """Speech ids -> ``(2, frames)``; a trailing lone c1 is dropped."""
        ids = np.asarray(self.speech_ids(list(ids)), dtype=np.int64)
        pairs = ids[: len(ids) // 2 * 2].reshape(-1, 2)
        codes = np.stack([pairs[:, 0] - self.c1, pairs[:, 1] - self.c2]) if len(pairs) else np.zeros((2, 0), np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= CODEBOOK):
            raise ValueError("speech ids do not alternate <|c1_*|>, <|c2_*|> as OuteTTS frames do")
        return codes

    def training_sequence(self, target: Utterance, prompt: Utterance | None = None) -> tuple[list[int], int]:
        head = self.prompt_ids(target.text, prompt.text if prompt else "", prompt.codes if prompt else None)
        tail = self.codes_to_ids(target.codes) + [self.ids[AUDIO_END]] + self._text("\n") + [self.ids[IM_END]]
        return head + tail, len(head) - 1

    def step_mask(self, step: int, rows: torch.Tensor) -> torch.Tensor:
        lo = self.c1 if step % 2 == 0 else self.c2
        mask = (rows >= lo) & (rows < lo + CODEBOOK)
        if step % 2 == 0:
            mask |= (rows == self.ids[AUDIO_END]) | (rows == self.ids[IM_END])
        return mask

    def random_codes(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, CODEBOOK, size=(2, frames))

    # -- codec ----------------------------------------------------------------------------------------------
    _codec = None

    def codec(self):
        """IBM's DAC.speech.v1.0 (``descript-audio-codec`` code), loaded once from SPADE_DAC or the HF cache."""
        if OuteSpeechLM._codec is None:
            dac = require("dac", "descript-audio-codec", "OuteTTS (DAC 24 kHz)")
            path = os.environ.get("SPADE_DAC")
            if not path:
                hub = require("huggingface_hub", "huggingface_hub", "OuteTTS (DAC.speech.v1.0 weights)",
                              purpose=f"find {DAC_REPO}/{DAC_FILE} (or set SPADE_DAC to that file)")
                path = hub.hf_hub_download(repo_id=DAC_REPO, filename=DAC_FILE)
            OuteSpeechLM._codec = dac.DAC.load(str(path)).eval()
        return OuteSpeechLM._codec

    def encode_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from spade_tts.audio import resample, to_mono

        codec = self.codec()
        dev = next(codec.parameters()).device
        wav = torch.from_numpy(resample(to_mono(audio), sample_rate, SAMPLE_RATE)).float().reshape(1, 1, -1).to(dev)
        with torch.no_grad():
            _, codes, *_ = codec.encode(codec.preprocess(wav, SAMPLE_RATE))
        return codes[0, :2].cpu().numpy().astype(np.int64)

    def decode_audio(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] != 2:
            raise ValueError(f"OuteTTS codes are (2, frames), got shape {codes.shape}")
        codec = self.codec()
        dev = next(codec.parameters()).device
        with torch.no_grad():
            z = codec.quantizer.from_codes(torch.from_numpy(codes)[None].to(dev))[0]
            wav = codec.decode(z)
        return wav.reshape(-1).float().cpu().numpy(), SAMPLE_RATE
