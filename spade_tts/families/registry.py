"""Find a checkpoint's family and load it: what ``--model PATH [--family NAME]`` goes through.

Families are imported lazily from :data:`spade_tts.families.FAMILY_MODULES`, so that looking up
one family never imports another family's optional codec package. Detection asks every family's
``detect`` (cheap: config.json, tokenizer files, file names, no weights); exactly one must say yes,
otherwise the error lists the families and says to pass ``--family``.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from spade_tts.families import FAMILY_MODULES, shipped_folder
from spade_tts.families.base import SpeechLM


def family_names() -> list[str]:
    return list(FAMILY_MODULES)


def family_class(name: str) -> type[SpeechLM]:
    """The :class:`SpeechLM` subclass of family ``name`` (as ``--family`` takes it)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in FAMILY_MODULES:
        raise ValueError(f"unknown family {name!r}; known families: {', '.join(FAMILY_MODULES)}")
    module = importlib.import_module(FAMILY_MODULES[key])
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, SpeechLM) and getattr(obj, "family", "") == key]
    if len(found) != 1:
        raise RuntimeError(f"{FAMILY_MODULES[key]} must define exactly one SpeechLM subclass with family={key!r}, "
                           f"found {len(found)}")
    return found[0]


def _available() -> dict[str, type[SpeechLM]]:
    """Every family whose module imports (a family still being written is skipped, not fatal)."""
    out = {}
    for name in FAMILY_MODULES:
        try:
            out[name] = family_class(name)
        except (ImportError, RuntimeError):
            continue
    return out


def matching_families(path: str | Path) -> list[str]:
    """Names of the families whose ``detect`` accepts ``path``."""
    path = Path(path)
    hits = []
    for name, cls in _available().items():
        try:
            if cls.detect(path):
                hits.append(name)
        except NotImplementedError:
            continue
    return hits


def find_family(path: str | Path) -> str | None:
    """The one family ``path`` belongs to, None when none matches; ValueError when several do."""
    hits = matching_families(path)
    if len(hits) > 1:
        raise ValueError(f"{path} looks like several families ({', '.join(hits)}); pass --family NAME")
    return hits[0] if hits else None


def detect_family(path: str | Path) -> str:
    """The family of the checkpoint folder ``path``, or a one-line error saying what to do."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model folder {path} not found")
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder; --model takes a checkpoint folder")
    name = find_family(path)
    if name is None:
        raise ValueError(f"{path} matches no known LLM-TTS family ({', '.join(FAMILY_MODULES)}); pass --family NAME "
                         "(for another extended-vocabulary model: --family generic with a spade_family.yaml)")
    return name


def model_folder(path: str | Path | None) -> Path:
    """The folder ``--model`` names: ``built-in`` (or nothing) is the built-in model shipped in the package,
    ``built-in-student`` its distilled half-depth student."""
    return shipped_folder(path) or Path(path)


def load_speech_lm(path: str | Path | None = None, family: str | None = None, dtype: torch.dtype | str = "auto",
                   device: str = "cpu", family_config: str | Path | None = None) -> SpeechLM:
    """Load the checkpoint at ``path`` as its family's :class:`SpeechLM` (detected unless ``family`` is given).

    ``path`` None or ``built-in``: the built-in model. ``family_config``: the YAML of the ``generic``
    family when it is not next to the checkpoint (``--family-config``); giving it implies ``family="generic"``.
    """
    path = model_folder(path)
    if not path.exists():
        raise FileNotFoundError(f"model folder {path} not found")
    if family_config:
        if family and family_class(family).family != "generic":
            raise ValueError(f"--family-config is for --family generic, not {family}")
        return family_class("generic").from_pretrained(path, dtype=dtype, device=device, config_file=family_config)
    name = family or detect_family(path)
    return family_class(name).from_pretrained(path, dtype=dtype, device=device)
