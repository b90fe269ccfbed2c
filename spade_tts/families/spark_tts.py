"""Spark-TTS 0.5B (SparkAudio): a Qwen2.5-0.5B LM speaking BiCodec tokens (``LLM/`` of the checkpoint).

A Spark-TTS checkpoint is a folder with ``LLM/`` (an HF Qwen2ForCausalLM folder: Qwen2.5's text
vocabulary of 151,643 ids and its specials such as ``<|im_end|>``, plus Spark's tokens),
``BiCodec/``, ``wav2vec2-large-xlsr-53/`` and ``config.yaml``. ``--model`` takes the root or
``LLM/`` itself. Spark's tokens: ``<|bicodec_global_0|>`` .. ``<|bicodec_global_4095|>`` (the
speaker: 32 global tokens per utterance), ``<|bicodec_semantic_0|>`` .. ``<|bicodec_semantic_8191|>``
(the content, 50 tokens/s) and control tokens (``<|task_tts|>``, ``<|start_content|>``, ...). Their
ids are read from the checkpoint's tokenizer and checked to be contiguous blocks.

Voice-cloning prompt, as upstream's ``SparkTTS.process_prompt`` builds it (one string, tokenized):
``<|task_tts|><|start_content|>`` + prompt text + target text (concatenated as given)
``<|end_content|><|start_global_token|>`` + the prompt's 32 global tokens + ``<|end_global_token|>``
+ ``<|start_semantic_token|>`` + the prompt's semantic tokens; the model continues with semantic
tokens and stops at ``<|im_end|>`` (``<|end_semantic_token|>`` also stops). Without a prompt text
upstream ends the prompt after ``<|end_global_token|>`` and the model writes
``<|start_semantic_token|>`` itself (allowed as the first new token only).

Codes (one 1-D int64 array, the representation of this adapter): semantic codes are 0..8191; the
32 global codes, when present, come first, stored as ``8192 + g`` (:func:`pack_codes`). What
``encode_audio`` returns, manifests hold and ``--prompt-codes`` takes is this packed array; what the
LM generates (``ids_to_codes``) is semantic only. ``decode_audio`` takes the global codes from the
array when it has them, else from the last voice prompt built by ``prompt_ids`` (what upstream
does: the speaker comes from the prompt audio).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from spade_tts.families.base import SpeechLayout, Utterance
from spade_tts.families.codec_hooks import cached, require
from spade_tts.families.hf import HFSpeechLM, link_or_copy, read_config, tokenizer_vocab

SEMANTIC_CODES, GLOBAL_CODES, GLOBAL_LEN = 8192, 4096, 32
GLOBAL_OFFSET = SEMANTIC_CODES  # packed codes: global code g is stored as 8192 + g
SAMPLE_RATE = 16000
TASK_TTS = "<|task_tts|>"
START_CONTENT, END_CONTENT = "<|start_content|>", "<|end_content|>"
START_GLOBAL, END_GLOBAL = "<|start_global_token|>", "<|end_global_token|>"
START_SEMANTIC, END_SEMANTIC = "<|start_semantic_token|>", "<|end_semantic_token|>"
IM_END = "<|im_end|>"
CONTROLS = (TASK_TTS, START_CONTENT, END_CONTENT, START_GLOBAL, END_GLOBAL, START_SEMANTIC, END_SEMANTIC, IM_END)


def semantic_token(k: int) -> str:
    return f"<|bicodec_semantic_{k}|>"


def global_token(k: int) -> str:
    return f"<|bicodec_global_{k}|>"


def pack_codes(global_codes, semantic_codes) -> np.ndarray:
    """BiCodec's (global, semantic) tokens -> this adapter's 1-D codes (globals first, as 8192 + g)."""
    g = np.asarray(global_codes if global_codes is not None else [], dtype=np.int64).reshape(-1)
    s = np.asarray(semantic_codes, dtype=np.int64).reshape(-1)
    if g.size not in (0, GLOBAL_LEN):
        raise ValueError(f"BiCodec has {GLOBAL_LEN} global tokens per utterance, got {g.size}")
    if g.size and (g.min() < 0 or g.max() >= GLOBAL_CODES):
        raise ValueError(f"BiCodec global codes must be in [0, {GLOBAL_CODES}), got {g.min()}..{g.max()}")
    if s.size and (s.min() < 0 or s.max() >= SEMANTIC_CODES):
        raise ValueError(f"BiCodec semantic codes must be in [0, {SEMANTIC_CODES}), got {s.min()}..{s.max()}")
    return np.concatenate([g + GLOBAL_OFFSET, s])


def unpack_codes(codes) -> tuple[np.ndarray | None, np.ndarray]:
    """This adapter's 1-D codes -> (32 global codes or None, semantic codes); checks the layout."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 1:
        raise ValueError(f"Spark-TTS codes are a 1-D array (32 global codes as 8192+g, then semantic codes), "
                         f"got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= GLOBAL_OFFSET + GLOBAL_CODES):
        raise ValueError(f"Spark-TTS codes must be in [0, {GLOBAL_OFFSET + GLOBAL_CODES}), got "
                         f"{codes.min()}..{codes.max()}")
    is_global = codes >= GLOBAL_OFFSET
    n = int(is_global.sum())
    if n == 0:
        return None, codes
    if n != GLOBAL_LEN or not is_global[:GLOBAL_LEN].all():
        raise ValueError(f"Spark-TTS codes must start with exactly {GLOBAL_LEN} global codes (8192+g) or have none; "
                         f"got {n} global codes")
    return codes[:GLOBAL_LEN] - GLOBAL_OFFSET, codes[GLOBAL_LEN:]


def _llm_dir(path: Path) -> Path:
    """``path/LLM`` for a checkpoint root, ``path`` itself otherwise."""
    path = Path(path)
    return path / "LLM" if (path / "LLM" / "config.json").is_file() else path



class SparkTTSSpeechLM(HFSpeechLM):
    family = "spark-tts"

    @classmethod
    def detect(cls, path: Path) -> bool:
        llm = _llm_dir(path)
        if read_config(llm).get("model_type") != "qwen2":
            return False
        vocab = tokenizer_vocab(llm)
        return semantic_token(0) in vocab and global_token(0) in vocab

    @classmethod
    def _ids(cls, tokenizer) -> dict[str, int]:
        names = CONTROLS + (semantic_token(0), semantic_token(SEMANTIC_CODES - 1), global_token(0),
                            global_token(GLOBAL_CODES - 1))
        ids = {n: tokenizer.convert_tokens_to_ids(n) for n in names}
        unk = getattr(tokenizer, "unk_token_id", None)
        missing = [n for n, i in ids.items() if i is None or (unk is not None and i == unk)]
        if missing:
            raise ValueError(f"this tokenizer has no {missing[0]}: not a Spark-TTS tokenizer (pass the right --family)")
        if ids[semantic_token(SEMANTIC_CODES - 1)] != ids[semantic_token(0)] + SEMANTIC_CODES - 1:
            raise ValueError(f"Spark-TTS semantic tokens must be {SEMANTIC_CODES} contiguous ids")
        if ids[global_token(GLOBAL_CODES - 1)] != ids[global_token(0)] + GLOBAL_CODES - 1:
            raise ValueError(f"Spark-TTS global tokens must be {GLOBAL_CODES} contiguous ids")
        return {k: int(v) for k, v in ids.items()}

    @classmethod
    def make_layout(cls, tokenizer, config) -> SpeechLayout:
        ids = cls._ids(tokenizer)
        start = ids[semantic_token(0)]
        return SpeechLayout(start, start + SEMANTIC_CODES, (ids[IM_END], ids[END_SEMANTIC]), (ids[START_SEMANTIC],))

    @classmethod
    def check_folder(cls, path: Path) -> Path:
        return super().check_folder(_llm_dir(path))

    @classmethod
    def from_pretrained(cls, path, dtype="auto", device: str = "cpu") -> "SparkTTSSpeechLM":
        root = Path(path)
        speech = super().from_pretrained(root, dtype=dtype, device=device)
        speech.root = root if _llm_dir(root) != root else None  # a full checkpoint (LLM/ + BiCodec/ ...)
        speech.path = _llm_dir(root)
        speech.ids = cls._ids(speech.tokenizer)
        speech.voice_globals = None
        return speech

    def save_pretrained(self, out) -> None:
        """A full checkpoint in, a full checkpoint out: ``out/LLM`` + the root's other files (hard links
        where possible); an ``LLM/`` folder in, an ``LLM/`` folder out."""
        out = Path(out)
        if getattr(self, "root", None) is None:
            return super().save_pretrained(out)
        super().save_pretrained(out / "LLM")
        for src in sorted(self.root.iterdir()):
            if src.name in ("LLM",) or src.name.startswith(".") or (out / src.name).exists():
                continue
            if src.is_dir():
                shutil.copytree(src, out / src.name, copy_function=link_or_copy)
            else:
                link_or_copy(src, out / src.name)

    # -- sequences ----------------------------------------------------------------------------------------
    def _text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def prompt_ids(self, text: str, prompt_text: str = "", prompt_codes: np.ndarray | None = None) -> list[int]:
        """Upstream's voice-cloning prompt; the prompt's 32 global codes are remembered for ``decode_audio``."""
        if prompt_codes is None:
            raise ValueError("Spark-TTS clones a voice: give prompt codes with the 32 BiCodec global tokens "
                             "(--prompt-audio/--prompt-text or --prompt-codes); controllable TTS is not supported")
        g, s = unpack_codes(prompt_codes)
        if g is None:
            raise ValueError(f"Spark-TTS prompt codes need the {GLOBAL_LEN} BiCodec global codes first (8192+g; "
                             "see spade_tts.families.spark_tts.pack_codes)")
        i = self.ids
        ids = [i[TASK_TTS], i[START_CONTENT]] + self._text(prompt_text + text) + [i[END_CONTENT], i[START_GLOBAL]]
        ids += (g + i[global_token(0)]).tolist() + [i[END_GLOBAL]]
        if prompt_text:
            ids += [i[START_SEMANTIC]] + (s + self.layout.speech_start).tolist()
        self.voice_globals = g
        return ids

    def codes_to_ids(self, codes: np.ndarray) -> list[int]:
        g, s = unpack_codes(codes)
        head = [] if g is None else (g + self.ids[global_token(0)]).tolist()
        return head + (s + self.layout.speech_start).tolist()

    def ids_to_codes(self, ids: list[int]) -> np.ndarray:
        """Semantic ids -> semantic codes (what the LM generates; global ids are not speech ids)."""
        return np.asarray(self.speech_ids(list(ids)), dtype=np.int64) - self.layout.speech_start

    def training_sequence(self, target: Utterance, prompt: Utterance | None = None) -> tuple[list[int], int]:
        """Cloning prompt (prompt's text, globals, semantic) + target semantic + ``<|im_end|>``; without a
        prompt utterance the target's own globals and no prompt text (the model writes
        ``<|start_semantic_token|>``)."""
        tg, ts = unpack_codes(target.codes)
        sem = (ts + self.layout.speech_start).tolist()
        if prompt is not None and prompt.text:
            head = self.prompt_ids(target.text, prompt.text, prompt.codes)
            return head + sem + [self.ids[IM_END]], len(head) - 1
        if tg is None:
            raise ValueError(f"Spark-TTS training codes need the {GLOBAL_LEN} global codes (8192+g) first")
        head = self.prompt_ids(target.text, "", pack_codes(tg, []))
        return head + [self.ids[START_SEMANTIC]] + sem + [self.ids[IM_END]], len(head) - 1

    def step_mask(self, step: int, rows: torch.Tensor) -> torch.Tensor:
        """``<|start_semantic_token|>`` only as the first new token."""
        mask = torch.ones(len(rows), dtype=torch.bool)
        if step > 0:
            mask &= rows != self.ids[START_SEMANTIC]
        return mask

    def random_codes(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        return pack_codes(rng.integers(0, GLOBAL_CODES, GLOBAL_LEN), rng.integers(0, SEMANTIC_CODES, frames))

    # -- codec ----------------------------------------------------------------------------------------------
    #: an already-built upstream ``BiCodecTokenizer`` (or one with its ``tokenize``/``detokenize``) for the codec
    #: hooks to use instead of loading the checkpoint's BiCodec
    codec_model = None

    def codec_root(self) -> Path:
        root = getattr(self, "root", None) or (self.path.parent if (self.path.parent / "BiCodec").is_dir() else None)
        root = os.environ.get("SPADE_SPARK_ROOT") or root
        if root is None:
            raise FileNotFoundError("BiCodec needs the Spark-TTS checkpoint root (with BiCodec/ and config.yaml): "
                                    "load the root instead of LLM/, or set SPADE_SPARK_ROOT")
        if not (Path(root) / "BiCodec").is_dir():
            raise FileNotFoundError(f"{root} has no BiCodec/ folder: point SPADE_SPARK_ROOT at the Spark-TTS-0.5B "
                                    "checkpoint root")
        return Path(root)

    def codec(self):
        """``codec_model``, else upstream's BiCodecTokenizer (``sparktts`` package from the Spark-TTS repository),
        loaded once from the checkpoint root."""
        if self.codec_model is not None:
            return self.codec_model
        mod = require("sparktts.models.audio_tokenizer", "sparktts", "Spark-TTS (BiCodec)",
                      purpose="encode and decode BiCodec tokens (clone github.com/SparkAudio/Spark-TTS and "
                              "put it on PYTHONPATH)")
        root = self.codec_root()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return cached(("spark-tts", str(root)), lambda: mod.BiCodecTokenizer(root, device=torch.device(device)))

    def encode_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from spade_tts.audio import resample, save_wav, to_mono

        codec = self.codec()
        wav = resample(to_mono(audio), sample_rate, SAMPLE_RATE)
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "prompt.wav"
            save_wav(str(file), wav, SAMPLE_RATE)
            g, s = codec.tokenize(str(file))
        return pack_codes(g.reshape(-1).cpu().numpy(), s.reshape(-1).cpu().numpy())

    def decode_audio(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        g, s = unpack_codes(codes)
        g = g if g is not None else self.voice_globals
        if g is None:
            raise ValueError("Spark-TTS decoding needs the 32 global codes of a voice: pack them into the codes "
                             "(pack_codes) or build a prompt first")
        codec = self.codec()
        dev = getattr(codec, "device", "cpu")
        with torch.no_grad():
            wav = codec.detokenize(torch.as_tensor(g, dtype=torch.long).reshape(1, -1).to(dev),
                                   torch.as_tensor(s, dtype=torch.long).reshape(1, -1).to(dev))
        return np.asarray(wav, dtype=np.float32).reshape(-1), SAMPLE_RATE
