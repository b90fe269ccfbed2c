"""LLM-TTS family adapters: one module per family, each defining a :class:`SpeechLM` subclass.

``FAMILY_MODULES`` maps a family name (what ``--family`` takes) to the module that holds its
adapter; ``spade_tts.families.registry`` (detection, loading by name) imports them lazily so
that importing the package never imports a family's optional codec package (nor torch).
The built-in model is the ``builtin`` family; its folder ships inside the package.
"""
from pathlib import Path

BUILTIN_MODEL = Path(__file__).resolve().parent.parent / "assets" / "reference"
# its training utterances through its own tokenizer (made by `spade train-reference --recipe recipes/reference-cpu-8x192.yaml`,
# the folder's spade_train_config.json `tokens_dir`; tested equal): the teacher's data that `spade distill` and
# `spade compress` draw from
BUILTIN_TOKENS = "data/reference_tokens-fsq3k"
BUILTIN_NAMES = ("", "built-in", "builtin", "default")  # what --model/--models take for the built-in model
# its half-depth student, distilled by SPADE on this CPU (recipes/distill-cpu.yaml; docs/distillation.md)
BUILTIN_STUDENT = BUILTIN_MODEL.parent / "reference-student"
BUILTIN_STUDENT_NAMES = ("built-in-student", "builtin-student")


def shipped_folder(name: str | Path | None) -> Path | None:
    """The shipped folder a model name stands for (the built-in model, its student), else None (a path)."""
    key = "" if name is None else str(name).strip().lower()
    if key in BUILTIN_NAMES:
        return BUILTIN_MODEL
    if key in BUILTIN_STUDENT_NAMES:
        return BUILTIN_STUDENT
    return None

FAMILY_MODULES = {
    "builtin": "spade_tts.families.builtin",
    "llasa": "spade_tts.families.llasa",
    "orpheus": "spade_tts.families.orpheus",
    "outetts": "spade_tts.families.outetts",
    "spark-tts": "spade_tts.families.spark_tts",
    "cosyvoice2": "spade_tts.families.cosyvoice2",
    "generic": "spade_tts.families.generic",
}
