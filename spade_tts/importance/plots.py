"""The per-layer scores as a CSV table and a bar chart, one panel per metric."""
from __future__ import annotations

import csv
import os
from pathlib import Path


def write_csv(path: Path, per_layer: list[dict], metrics: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer"] + metrics)
        for row in per_layer:
            w.writerow([row["layer"]] + [f"{row[m]:.6f}" for m in metrics])
    os.replace(tmp, path)


LABELS = {"wli": "WLI: WER with the layer skipped", "block_influence": "block influence (1 - cos)",
          "angular": "angular distance / pi", "tf_loss_rise": "teacher-forced loss rise (nats)"}


def plot_importance(path: Path, per_layer: list[dict], metrics: list[str], full_wer: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in per_layer]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6, 0.45 * len(layers) + 2), 2.2 * len(metrics)),
                             sharex=True, squeeze=False)
    for ax, m in zip(axes[:, 0], metrics):
        ax.bar(layers, [r[m] for r in per_layer], color="#3b6ea8" if m == "wli" else "#999999")
        ax.set_ylabel(m, fontsize=8)
        ax.set_title(LABELS.get(m, m), fontsize=9, loc="left")
        if m == "wli" and full_wer is not None:
            ax.axhline(full_wer, color="#c0392b", lw=1, ls="--", label=f"full model {100 * full_wer:.1f} %")
            ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("decoder layer")
    axes[-1, 0].set_xticks(layers)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
