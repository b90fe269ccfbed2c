"""Orpheus TTS (Canopy Labs): a Llama-3.2-3B LM speaking SNAC 24 kHz codes, 7 tokens per frame.

Layout (vocabulary 156,940): the Llama-3 text vocabulary (128,256 ids), then ``<custom_token_N>``
at id 128256 + N. Upstream's markers: start of speech 128257, end of speech 128258, start/end of
human 128259/128260, start/end of AI 128261/128262, pad 128263; audio codes from 128266.
One SNAC frame (2,048 samples, ~85 ms at 24 kHz; SNAC's levels run at ~12, ~23 and ~47 Hz) is 7
tokens, ~82 tokens/s: level-1 code, level-2 code, two level-3 codes, level-2 code, two level-3 codes;
the token at position p of the frame is ``128266 + p * 4096 + code``. Codes here are ``(frames, 7)`` arrays in that order.

Prompt, as upstream's engine builds it: ``[start_of_human] + tokenizer("{voice}: {text}")`` (with
``<|begin_of_text|>``) ``+ [<|eot_id|>, end_of_human, start_of_ai, start_of_speech]``; the model
speaks until end of speech. A zero-shot prompt utterance is a previous turn: its text turn, then
its speech closed by end of speech and end of AI (the pretrained model's conversation format).
Generation is constrained to the frame structure (position p may only use block p; a stop only
at a frame boundary) so whatever a pruned model samples decodes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spade_tts.families.base import SpeechLayout, Utterance
from spade_tts.families.codec_hooks import cached, codec_weights, load_codec, require
from spade_tts.families.hf import HFSpeechLM, read_config, tokenizer_vocab

TEXT_VOCAB = 128256
BEGIN_OF_TEXT, END_OF_TEXT = 128000, 128009  # <|begin_of_text|>, <|eot_id|>
START_OF_SPEECH, END_OF_SPEECH = TEXT_VOCAB + 1, TEXT_VOCAB + 2
START_OF_HUMAN, END_OF_HUMAN = TEXT_VOCAB + 3, TEXT_VOCAB + 4
START_OF_AI, END_OF_AI = TEXT_VOCAB + 5, TEXT_VOCAB + 6
PAD = TEXT_VOCAB + 7
AUDIO_START = TEXT_VOCAB + 10
FRAME = 7
CODEBOOK = 4096
SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 2048  # SNAC 24 kHz: hop 512 x the coarsest level's stride 4
SNAC_REPO = "hubertsiuzdak/snac_24khz"
# which SNAC level each of the 7 positions of a frame belongs to
FRAME_LEVELS = (0, 1, 2, 2, 1, 2, 2)


def custom_token(n: int) -> str:
    return f"<custom_token_{n}>"


def frames_to_levels(codes: np.ndarray) -> list[np.ndarray]:
    """``(T, 7)`` frames -> SNAC levels ``[(T,), (2T,), (4T,)]``."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1, FRAME)
    return [codes[:, 0], codes[:, [1, 4]].reshape(-1), codes[:, [2, 3, 5, 6]].reshape(-1)]


def levels_to_frames(levels) -> np.ndarray:
    """SNAC levels ``[(T,), (2T,), (4T,)]`` -> ``(T, 7)`` frames."""
    l1, l2, l3 = (np.asarray(x, dtype=np.int64).reshape(-1) for x in levels)
    t = len(l1)
    if len(l2) != 2 * t or len(l3) != 4 * t:
        raise ValueError(f"SNAC levels must have T, 2T, 4T codes; got {len(l1)}, {len(l2)}, {len(l3)}")
    l2, l3 = l2.reshape(t, 2), l3.reshape(t, 4)
    return np.stack([l1, l2[:, 0], l3[:, 0], l3[:, 1], l2[:, 1], l3[:, 2], l3[:, 3]], axis=1)


class OrpheusSpeechLM(HFSpeechLM):
    family = "orpheus"
    uses_prompt = False  # the released models speak named voices; a prompt turn is optional

    @classmethod
    def detect(cls, path: Path) -> bool:
        cfg = read_config(path)
        if cfg.get("model_type") != "llama" or int(cfg.get("vocab_size", 0)) < AUDIO_START + FRAME * CODEBOOK:
            return False
        vocab = tokenizer_vocab(path)
        return vocab.get(custom_token(10)) == AUDIO_START and vocab.get(custom_token(2)) == END_OF_SPEECH

    @classmethod
    def make_layout(cls, tokenizer, config) -> SpeechLayout:
        if int(config.vocab_size) < AUDIO_START + FRAME * CODEBOOK:
            raise ValueError(f"vocabulary of {config.vocab_size} is too small for Orpheus (needs "
                             f"{AUDIO_START + FRAME * CODEBOOK}); pass the right --family")
        return SpeechLayout(AUDIO_START, AUDIO_START + FRAME * CODEBOOK, (END_OF_SPEECH,))

    @property
    def pad_id(self) -> int:
        return PAD

    # -- sequences ----------------------------------------------------------------------------------------
    def _text_turn(self, text: str) -> list[int]:
        words = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return [START_OF_HUMAN, BEGIN_OF_TEXT] + words + [END_OF_TEXT, END_OF_HUMAN, START_OF_AI, START_OF_SPEECH]

    def prompt_ids(self, text: str, prompt_text: str = "", prompt_codes: np.ndarray | None = None,
                   voice: str = "") -> list[int]:
        """Upstream's prompt; ``voice`` (finetuned models: tara, leah, ...) becomes the "voice: " prefix."""
        ids: list[int] = []
        if prompt_codes is not None and len(prompt_codes):
            ids += self._text_turn(prompt_text) + self.codes_to_ids(prompt_codes) + [END_OF_SPEECH, END_OF_AI]
        return ids + self._text_turn(f"{voice}: {text}" if voice else text)

    def codes_to_ids(self, codes: np.ndarray) -> list[int]:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != FRAME:
            raise ValueError(f"Orpheus codes are (frames, 7) SNAC frames, got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= CODEBOOK):
            raise ValueError(f"SNAC codes must be in [0, {CODEBOOK}), got {codes.min()}..{codes.max()}")
        return (codes + AUDIO_START + np.arange(FRAME) * CODEBOOK).reshape(-1).tolist()

    def ids_to_codes(self, ids: list[int]) -> np.ndarray:
        """Speech ids -> ``(frames, 7)``; a trailing incomplete frame is dropped (as upstream does)."""
        ids = np.asarray(self.speech_ids(list(ids)), dtype=np.int64)
        n = len(ids) // FRAME * FRAME
        frames = ids[:n].reshape(-1, FRAME) - AUDIO_START - np.arange(FRAME) * CODEBOOK
        if frames.size and (frames.min() < 0 or frames.max() >= CODEBOOK):
            raise ValueError("speech ids do not follow Orpheus' 7-position frame layout (a token sits in another "
                             "position's block of 4096)")
        return frames

    def training_sequence(self, target: Utterance, prompt: Utterance | None = None) -> tuple[list[int], int]:
        head = self.prompt_ids(target.text, prompt.text if prompt else "", prompt.codes if prompt else None)
        return head + self.codes_to_ids(target.codes) + [END_OF_SPEECH, END_OF_AI], len(head) - 1

    def step_mask(self, step: int, rows: torch.Tensor) -> torch.Tensor:
        pos = step % FRAME
        lo = AUDIO_START + pos * CODEBOOK
        mask = (rows >= lo) & (rows < lo + CODEBOOK)
        if pos == 0:
            mask |= rows == END_OF_SPEECH
        return mask

    def random_codes(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, CODEBOOK, size=(frames, FRAME))

    # -- codec ----------------------------------------------------------------------------------------------
    #: an already-built ``snac.SNAC`` for the codec hooks to use instead of loading weights (a random-init one in
    #: the tests, or one the caller loaded itself)
    codec_model = None

    def codec(self):
        """``codec_model``, else SNAC 24 kHz (``snac`` package) loaded once from SPADE_SNAC (a local
        snac_24khz folder) or hubertsiuzdak/snac_24khz."""
        if self.codec_model is not None:
            return self.codec_model
        what = "the snac_24khz folder (config.json + pytorch_model.bin)"
        source = codec_weights("SPADE_SNAC", SNAC_REPO, "Orpheus", what)
        snac = require("snac", "snac", "Orpheus (SNAC 24 kHz)")
        return cached(("orpheus", source), lambda: load_codec(lambda s: snac.SNAC.from_pretrained(s).eval(), source,
                                                              "SPADE_SNAC", "Orpheus (SNAC 24 kHz)", what))

    @staticmethod
    def _check_codec(codec):
        """Orpheus speaks SNAC 24 kHz (3 levels): another SNAC's codes would not map onto the 7-token frame."""
        rate, strides = getattr(codec, "sampling_rate", SAMPLE_RATE), getattr(codec, "vq_strides", [4, 2, 1])
        if rate != SAMPLE_RATE or list(strides) != [4, 2, 1]:
            raise ValueError(f"Orpheus needs SNAC 24 kHz (3 levels, vq_strides [4, 2, 1]); this SNAC runs at {rate} Hz "
                             f"with vq_strides {list(strides)}: load hubertsiuzdak/snac_24khz")
        return codec

    def encode_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from spade_tts.audio import resample, to_mono

        wav = resample(to_mono(audio), sample_rate, SAMPLE_RATE)
        codec = self._check_codec(self.codec())
        dev = next(codec.parameters()).device
        with torch.no_grad():
            levels = codec.encode(torch.from_numpy(wav).float().reshape(1, 1, -1).to(dev))
        return levels_to_frames([x.reshape(-1).cpu().numpy() for x in levels])

    def decode_audio(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        """``(frames, 7)`` codes -> 24 kHz audio, 2,048 samples a frame (SNAC decodes the whole clip at once, as
        upstream's non-streaming path does)."""
        codec = self._check_codec(self.codec())
        dev = next(codec.parameters()).device
        levels = [torch.from_numpy(x)[None].to(dev) for x in frames_to_levels(codes)]
        with torch.no_grad():
            wav = codec.decode(levels)
        return wav.reshape(-1).float().cpu().numpy(), SAMPLE_RATE
