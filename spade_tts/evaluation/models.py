"""The models `spade eval` compares: loading, naming, sizes, and the LM timer.

Today every model is a folder that ``ReferenceTTS.from_pretrained`` loads (the built-in
reference LM, its pruned and distilled students). Another LLM-TTS family plugs in by giving
:func:`load_model` a branch that returns an object with the same few members as
:class:`ReferenceAdapter`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUILTIN_NAMES = ("", "built-in", "builtin", "default")
# = spade_tts.reference.synth.BUILTIN_MODEL, without importing torch just to check a cache key
BUILTIN_FOLDER = Path(__file__).resolve().parent.parent / "assets" / "reference"


@dataclass
class ModelSpec:
    label: str  # name in tables, JSON and folders
    path: str  # "" = the built-in model

    @property
    def shown(self) -> str:
        return self.path or "built-in"


def parse_model_specs(specs: list[str]) -> list[ModelSpec]:
    """``built-in``, ``PATH`` or ``LABEL=PATH``; labels default to the folder name and are made unique."""
    from spade_tts.evaluation.items import safe_name

    if not specs:
        raise ValueError("no models to evaluate: pass --models A [B ...] (built-in or model folders)")
    out, used = [], set()
    for raw in specs:
        raw = str(raw).strip()
        label, path = "", raw
        if "=" in raw and not Path(raw).exists():
            label, path = (s.strip() for s in raw.split("=", 1))
            if not label:
                raise ValueError(f"model {raw!r}: the label before '=' is empty (write LABEL=PATH, e.g. pruned=runs/pruned)")
        if path.lower() in BUILTIN_NAMES:
            path = ""
        elif not Path(path).is_dir():
            raise ValueError(f"model {path!r} is not a folder: pass 'built-in' or a model folder "
                             "(e.g. one written by `spade train-reference` or `spade prune`)")
        base = safe_name(label or (Path(path).resolve().name if path else "built-in"))
        name, k = base, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        out.append(ModelSpec(name, str(Path(path).resolve()) if path else ""))
    return out


def model_signature(spec: ModelSpec) -> str:
    """A cheap identity of a model folder (its files' names, sizes and modification times).

    Rewriting, retraining or re-pruning a folder changes it, so cached results are not reused
    for a different model; copying a folder elsewhere also changes it (safe: it is recomputed).
    """
    folder = Path(spec.path) if spec.path else BUILTIN_FOLDER
    h = hashlib.sha256(str(folder.resolve()).encode())
    for f in sorted(folder.iterdir()) if folder.is_dir() else []:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


class LMTimer:
    """Time spent in the LM's decode loop and the speech tokens it produced.

    Wraps ``spade_tts.reference.synth.generate_codes`` (prefill + token-by-token decoding with
    the KV cache) while active; everything else in a synthesis call (text to phones, prompt
    encoding, codec decoding to audio) is outside it. On CUDA the clock is read after a
    synchronize so that queued kernels are counted.
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.seconds = 0.0
        self.tokens = 0
        self.calls = 0

    def reset(self) -> None:
        self.seconds, self.tokens, self.calls = 0.0, 0, 0

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    @contextlib.contextmanager
    def active(self):
        from spade_tts.reference import synth

        if not hasattr(synth, "generate_codes"):
            raise RuntimeError("spade_tts.reference.synth.generate_codes is gone: the LM timer of `spade eval` "
                               "must be pointed at the new decode loop")
        original = synth.generate_codes

        def timed(*args, **kwargs):
            self.sync()
            t = time.perf_counter()
            out = original(*args, **kwargs)
            self.sync()
            self.seconds += time.perf_counter() - t
            self.tokens += sum(len(codes) for codes, _, _ in out)
            self.calls += 1
            return out

        synth.generate_codes = timed
        try:
            yield self
        finally:
            synth.generate_codes = original


@dataclass
class SynthOutput:
    audio: np.ndarray
    tokens: int
    guard_hits: int
    truncated: bool


class ReferenceAdapter:
    """A spade reference-family model (built-in LM + k-means codec + Griffin-Lim)."""

    family = "spade-reference"

    def __init__(self, spec: ModelSpec, device: str):
        from spade_tts.reference.synth import BUILTIN_MODEL, ReferenceTTS

        folder = Path(spec.path) if spec.path else BUILTIN_MODEL
        if (folder / "config.json").is_file() and not (folder / "spade_vocab.json").is_file():
            model_type = json.loads((folder / "config.json").read_text()).get("model_type", "?")
            raise ValueError(f"{folder} is a Hugging Face {model_type!r} model but not a spade reference-family TTS "
                             "(no spade_vocab.json): `spade eval` can load the built-in model and its pruned or "
                             "distilled students for now")
        self.spec = spec
        self.tts = ReferenceTTS.from_pretrained(spec.path or None, device=device)
        self.lm = self.tts.model
        self.sample_rate = 16000

    def params(self) -> dict:
        """Parameters of the LM (tied weights once) and of the whole system (LM + codec codebook)."""
        lm = sum(p.numel() for p in self.lm.parameters())
        codec = int(self.tts.codec.codebook.numel())
        return {"lm": int(lm), "system": int(lm + codec), "codec": codec}

    def layers(self) -> int:
        try:
            from spade_tts.pruning.layers import decoder_layers

            return len(decoder_layers(self.lm))
        except (ImportError, ValueError):
            return int(self.lm.config.num_hidden_layers)

    def synthesize(self, text: str, prompt_audio: np.ndarray, prompt_text: str, settings) -> SynthOutput:
        res = self.tts.synthesize_pairs([text], [prompt_audio], [prompt_text], settings, batch_size=1)[0]
        return SynthOutput(np.asarray(res.audio, dtype=np.float32), int(len(res.codes)), int(res.guard_hits),
                           bool(res.truncated))


def load_model(spec: ModelSpec, device: str):
    return ReferenceAdapter(spec, device)
