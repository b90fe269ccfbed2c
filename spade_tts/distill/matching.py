"""Which teacher layer each student layer is taught to imitate (SPADE's layer matching).

A student made by ``spade prune`` is a copy of the teacher's kept layers ``r_0 < r_1 < ...``
(``kept`` in ``spade_pruning.json``). Student layer ``n`` starts as teacher layer ``r_n``, but
it now has to do the work of every removed layer up to the next kept one: its output is
compared with teacher layer ``r_{n+1} - 1`` (dynamic, SPADE's "adaptive" matching), and the
last student layer with the last teacher layer, so the final residual stream is taught
end-to-end. Static matching (``r_n`` itself) is the ablation: it teaches each copy to stay
what it was, leaving the gaps uncovered.
"""
from __future__ import annotations

import json
from pathlib import Path

MODES = ("dynamic", "static")
PRUNING_FILE = "spade_pruning.json"


def _check(kept: list[int], teacher_layers: int) -> list[int]:
    kept = [int(i) for i in kept]
    if not kept:
        raise ValueError("the pruning record keeps no layer; make the student again with `spade prune`")
    if kept != sorted(set(kept)):
        raise ValueError(f"kept layers {kept} must be distinct and increasing "
                         "(student layer n = teacher layer kept[n])")
    if kept[0] < 0 or kept[-1] >= teacher_layers:
        raise ValueError(f"kept layers {kept} are not all in 0..{teacher_layers - 1} "
                         f"for a {teacher_layers}-layer teacher")
    return kept


def dynamic_matching(kept: list[int], teacher_layers: int) -> list[int]:
    """Student layer n -> teacher layer kept[n+1] - 1; the last student layer -> the last teacher layer."""
    kept = _check(kept, teacher_layers)
    return [kept[n + 1] - 1 for n in range(len(kept) - 1)] + [teacher_layers - 1]


def static_matching(kept: list[int], teacher_layers: int) -> list[int]:
    """Student layer n -> teacher layer kept[n], the layer it was copied from."""
    return _check(kept, teacher_layers)


def layer_matching(kept: list[int], teacher_layers: int, mode: str = "dynamic") -> list[int]:
    """``match[n]`` = the teacher layer whose output student layer ``n`` is compared with."""
    if mode == "dynamic":
        return dynamic_matching(kept, teacher_layers)
    if mode == "static":
        return static_matching(kept, teacher_layers)
    raise ValueError(f"matching={mode!r} is not one of {', '.join(MODES)}")


def read_pruning_record(student_dir: str | Path) -> dict:
    """The ``spade_pruning.json`` of a student folder, checked for the keys distillation needs."""
    path = Path(student_dir) / PRUNING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the student must be a folder written by `spade prune` "
                                "(it records which teacher layer each student layer came from)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}); make the student again with `spade prune`") from None
    missing = [k for k in ("kept", "teacher_layers") if k not in record]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; make the student again with `spade prune`")
    _check(record["kept"], int(record["teacher_layers"]))
    return record
