"""The per-layer scores as a CSV table and a bar chart, one panel per metric."""
from __future__ import annotations

import csv
from pathlib import Path

from spade_tts.importance.metrics import label
from spade_tts.io import atomic_path


def write_csv(path: Path, per_layer: list[dict], metrics: list[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer"] + metrics)
        for row in per_layer:
            w.writerow([row["layer"]] + [f"{row[m]:.6f}" for m in metrics])



def plot_importance(path: Path, per_layer: list[dict], metrics: list[str], full_wer: float | None,
                    removed: list[int] | None = None, removed_label: str = "removed by pruning") -> None:
    """One bar panel per metric; layers in ``removed`` are drawn grey and hatched.

    ``removed`` lets the report show which bars a pruned model actually lost, so the ranking
    and the cut it led to can be read from one chart.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in per_layer]
    gone = set(removed or [])
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6, 0.45 * len(layers) + 2), 2.2 * len(metrics)),
                             sharex=True, squeeze=False)
    for k, (ax, m) in enumerate(zip(axes[:, 0], metrics)):
        kept_rows = [r for r in per_layer if r["layer"] not in gone]
        gone_rows = [r for r in per_layer if r["layer"] in gone]
        ax.bar([r["layer"] for r in kept_rows], [r[m] for r in kept_rows],
               color="#3b6ea8" if m == "wli" else "#999999")
        if gone_rows:
            ax.bar([r["layer"] for r in gone_rows], [r[m] for r in gone_rows], color="#e4e4e4",
                   edgecolor="#8a8a8a", hatch="///", label=removed_label if k == 0 else None)
        ax.set_ylabel(m, fontsize=8)
        ax.set_title(label(m), fontsize=9, loc="left")
        if m == "wli" and full_wer is not None:
            ax.axhline(full_wer, color="#c0392b", lw=1, ls="--", label=f"full model {100 * full_wer:.1f} %")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("decoder layer")
    axes[-1, 0].set_xticks(layers)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
