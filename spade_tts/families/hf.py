"""Shared loading and saving for families whose LM is a plain Hugging Face ``*ForCausalLM`` folder.

LLaSA, Orpheus, Spark-TTS's LLM, OuteTTS and generic extended-vocabulary checkpoints ship as an HF
folder (config.json, safetensors, tokenizer files) with the speech tokens appended to the text
vocabulary. :class:`HFSpeechLM` loads such a folder with ``AutoModelForCausalLM`` and
``AutoTokenizer`` and writes it back the same way, so the family's own tools (and plain
``from_pretrained``) read what spade writes. A subclass supplies ``detect`` and ``make_layout``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from spade_tts.families.base import SpeechLayout, SpeechLM


def read_config(path: Path) -> dict:
    """config.json of a model folder as a dict; {} when it is missing or unreadable."""
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def tokenizer_vocab(path: Path) -> dict[str, int]:
    """Token -> id from a folder's tokenizer files without building the tokenizer (fast detection).

    Reads tokenizer.json (model vocab + added tokens) and added_tokens.json / tokenizer_config.json's
    ``added_tokens_decoder``; {} when none is there.
    """
    path, vocab = Path(path), {}
    tj = path / "tokenizer.json"
    if tj.is_file():
        try:
            data = json.loads(tj.read_text())
        except (OSError, json.JSONDecodeError):
            data = {}
        model_vocab = (data.get("model") or {}).get("vocab")
        if isinstance(model_vocab, dict):
            vocab.update(model_vocab)
        for tok in data.get("added_tokens") or []:
            if isinstance(tok, dict) and "content" in tok and "id" in tok:
                vocab[tok["content"]] = int(tok["id"])
    at = path / "added_tokens.json"
    if at.is_file():
        try:
            vocab.update({k: int(v) for k, v in json.loads(at.read_text()).items()})
        except (OSError, json.JSONDecodeError, ValueError, AttributeError):
            pass
    tc = path / "tokenizer_config.json"
    if tc.is_file():
        try:
            for k, v in (json.loads(tc.read_text()).get("added_tokens_decoder") or {}).items():
                if isinstance(v, dict) and "content" in v:
                    vocab[v["content"]] = int(k)
        except (OSError, json.JSONDecodeError, ValueError, AttributeError):
            pass
    return vocab


def load_tokenizer(path: Path):
    """The folder's tokenizer, of the class its tokenizer_config.json declares.

    transformers 5's AutoTokenizer picks the class from the model type (Qwen2Tokenizer for a qwen2
    config, ...), which rebuilds the pre-tokenizer; a folder that declares the plain fast tokenizer
    (``PreTrainedTokenizerFast``/``TokenizersBackend``: an exported tokenizer.json) is read as saved.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        declared = json.loads((Path(path) / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, json.JSONDecodeError):
        declared = None
    if declared in ("PreTrainedTokenizerFast", "TokenizersBackend") and (Path(path) / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def resolve_dtype(dtype):
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        value = getattr(torch, str(dtype))
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype (float32, bfloat16, float16 or auto)")
    return value


class HFSpeechLM(SpeechLM):
    """A family whose LM is an HF causal LM with speech tokens inside its vocabulary."""

    #: files other than weights/config/tokenizer that belong to the family (copied on save)
    side_file_names: tuple[str, ...] = ()

    @classmethod
    def make_layout(cls, tokenizer, config) -> SpeechLayout:
        raise NotImplementedError

    @classmethod
    def check_folder(cls, path: Path) -> Path:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model folder {path} not found")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: expected a Hugging Face {cls.family} checkpoint folder")
        return path

    @classmethod
    def from_pretrained(cls, path, dtype="auto", device: str = "cpu") -> "HFSpeechLM":
        from transformers import AutoModelForCausalLM

        path = cls.check_folder(path)
        tokenizer = load_tokenizer(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype))
        lm.to(device)
        lm.eval()
        layout = cls.make_layout(tokenizer, lm.config)
        vocab = int(lm.config.vocab_size)
        if layout.speech_end > vocab or max(layout.stop_ids, default=0) >= vocab:
            raise ValueError(f"{path}: the {cls.family} speech tokens need ids up to {layout.speech_end - 1} but the "
                             f"model's vocabulary has {vocab}; is this really a {cls.family} checkpoint?")
        return cls(path, lm, tokenizer, layout)

    def save_pretrained(self, out) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            self.lm.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        for name in self.side_file_names:
            src = self.path / name
            if src.exists() and not (out / name).exists():
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, out / name)


def link_or_copy(src, dst):
    """Hard-link ``src`` to ``dst`` (large untouched files of a checkpoint cost no space), else copy it."""
    import os

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
