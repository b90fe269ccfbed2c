"""The models `spade eval` compares: naming, loading (any family), sizes, synthesis with its LM time.

A model is a checkpoint folder of any family (``spade_tts.families``: the built-in model, LLaSA,
Orpheus, CosyVoice 2, ...) or a pruned or distilled student of one, which loads the same way.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spade_tts.families import BUILTIN_MODEL, shipped_folder


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
        shipped = shipped_folder(path)
        if shipped == BUILTIN_MODEL:
            path = ""
        elif shipped is not None:
            label, path = label or path.lower(), str(shipped)
        if path and not Path(path).is_dir():
            raise ValueError(f"model {path!r} is not a folder: pass 'built-in' or a checkpoint folder of any family "
                             "(e.g. one written by `spade prune` or `spade distill`)")
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
    folder = Path(spec.path) if spec.path else BUILTIN_MODEL
    h = hashlib.sha256(str(folder.resolve()).encode())
    for f in sorted(folder.iterdir()) if folder.is_dir() else []:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


@dataclass
class SynthOutput:
    audio: np.ndarray
    tokens: int
    guard_hits: int
    truncated: bool
    lm_seconds: float  # decode loop only (prefill + token steps), measured by the shared loop
    extra: dict = field(default_factory=dict)  # GenerationStats.extra (speculative decoding's counts)


class EvalModel:
    """A model under evaluation: any family's checkpoint behind :class:`SpeechLM`, spoken through
    :func:`spade_tts.synthesis.synthesize` (the same path `spade score` and `spade synth` use)."""

    def __init__(self, spec: ModelSpec, device: str, family: str = "", family_config: str = ""):
        from spade_tts.families.registry import load_speech_lm

        self.spec = spec
        self.speech = load_speech_lm(spec.path or None, family or None, device=device,
                                     family_config=family_config or None)
        self.family = self.speech.family
        self.lm = self.speech.lm
        self.sample_rate = 0  # the codec's rate, known after the first synthesis

    def params(self) -> dict:
        """Parameters of the LM (tied weights once) and of the whole system (LM + codec where it is loaded)."""
        lm = sum(p.numel() for p in self.lm.parameters())
        codec = self.speech.codec_params()
        return {"lm": int(lm), "system": int(lm + codec), "codec": int(codec)}

    def layers(self) -> int:
        from spade_tts.pruning.layers import decoder_layers

        return len(decoder_layers(self.lm))

    def synthesize(self, text: str, prompt_audio: np.ndarray, prompt_text: str, cfg) -> SynthOutput:
        from spade_tts.synthesis import synthesize

        res = synthesize(self.speech, [text], [prompt_audio], [prompt_text], cfg, batch_size=1)[0]
        self.sample_rate = res.sample_rate
        return SynthOutput(res.audio, res.tokens, res.guard_hits, res.truncated, res.lm_seconds, res.extra)


def load_model(spec: ModelSpec, device: str, family: str = "", family_config: str = "") -> EvalModel:
    return EvalModel(spec, device, family, family_config)
