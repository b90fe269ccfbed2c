"""The layer-importance metrics, in one table that scoring, pruning, plots, the report and `--help` read.

Higher always means more important (a layer whose removal hurts more). Only WLI needs speech
recognition (and the family's codec decoder); the others come from teacher-forced forwards.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str  # as scores.json, `spade prune --metric` and the CSV columns spell it
    label: str  # for charts and tables
    needs_asr: bool  # synthesis + ASR (minutes) rather than teacher-forced forwards (seconds)
    summary: str  # one line for --help


METRICS = {m.name: m for m in (
    Metric("wli", "WLI: WER with the layer skipped", True,
           "SPADE's metric: mean WER of the speech with the layer skipped (each item capped at item_wer_cap)"),
    Metric("block_influence", "block influence (1 - cos)", False,
           "1 - cosine between the layer's input and output hidden states"),
    Metric("angular", "angular distance / pi", False, "angle between the layer's input and output, / pi"),
    Metric("tf_loss_rise", "teacher-forced loss rise (nats)", False,
           "rise of the target-speech cross-entropy when the layer is skipped"),
)}
PROXY_METRICS = tuple(name for name, m in METRICS.items() if not m.needs_asr)


def label(name: str) -> str:
    """A metric's chart label; a metric the table does not know is shown by its name."""
    return METRICS[name].label if name in METRICS else name


def help_text() -> str:
    return "; ".join(f"{m.name}: {m.summary}" for m in METRICS.values())
