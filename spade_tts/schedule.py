"""The learning-rate shape both trainers use: linear warm-up, then cosine decay to a floor.

A time budget bends the decay: progress is whichever of steps or time runs out first, so a
run stopped by its budget still ends at a low learning rate instead of being cut off at the
peak (a budget-limited run on a lent GPU is the usual case, not the exception).
"""
from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, steps: int, floor: float, time_progress: float = 0.0) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): ``floor`` .. 1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max(time_progress, (step - warmup) / max(1, steps - warmup)))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
