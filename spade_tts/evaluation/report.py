"""A static HTML report of a compression run: numbers to read and sentences to listen to.

One folder, no network, no JavaScript: ``index.html`` with inline CSS, the charts as PNG
files and every wav copied under ``audio/``, all linked relatively, so the folder can be
zipped, mailed or served as is. Sections:

* the comparison table of `spade eval` (with the 95 % intervals of the deltas);
* the layer-importance chart and table of `spade score` (when a scores JSON is given), with
  the layers a pruned model among the evaluated ones removed marked in both;
* the distillation loss curves (when a JSONL training log is given);
* for N sentences (every voice and every distinct sentence before any repeat), one row: the
  text, the prompt audio, and every model's output side by side, each with its Whisper
  transcript, WER and speaker cosine.
"""
from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from spade_tts.importance.metrics import METRICS
from spade_tts.io import atomic_path, write_json, write_text

NOT_LOSSES = {"step", "lr", "learning_rate", "seconds", "time", "elapsed", "epoch", "tokens", "wall", "samples"}

CSS = """
body { font: 14px/1.45 -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1400px; padding: 0 16px; color: #1d1d1f; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
.meta { color: #555; font-size: 12px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d8d8d8; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f2f4f7; } td:first-child, th:first-child { text-align: left; }
tr.first-model td { background: #fafafa; }
.ci { color: #666; font-size: 12px; white-space: nowrap; }
.note { color: #555; font-size: 12px; max-width: 1000px; }
table.audio td, table.audio th { text-align: left; min-width: 220px; } table.audio td.text { max-width: 320px; }
audio { width: 220px; height: 32px; display: block; }
.hyp { color: #444; font-size: 12px; margin-top: 2px; } .score { color: #666; font-size: 11px; }
img.chart { max-width: 100%; border: 1px solid #eee; }
tr.removed-layer td { color: #8a8a8a; background: #f3f3f3; }
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _load_json(obj, what: str) -> dict:
    if isinstance(obj, dict):
        return obj
    p = Path(obj)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found")
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise ValueError(f"{what} {p} is not valid JSON ({e})") from None


def read_loss_log(path: str | Path) -> list[dict]:
    """Rows of a JSONL training log that carry a ``step``; a malformed line is an error naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"distillation log {p} not found")
    rows = []
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{p} line {lineno}: not a JSON object ({e.msg}); each line must be one dict "
                             "like {\"step\": 10, \"loss\": 1.2}") from None
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


def loss_terms(rows: list[dict]) -> list[str]:
    """Numeric keys other than step/lr/time, in first-seen order, with ``loss`` first."""
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in keys and k.lower() not in NOT_LOSSES and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    return sorted(keys, key=lambda k: (k != "loss", keys.index(k)))


def plot_losses(rows: list[dict], path: Path) -> list[str]:
    """One panel per loss term against the step; returns the terms drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = loss_terms(rows)
    if not terms:
        return []
    cols = min(3, len(terms))
    nrows = (len(terms) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(terms):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, terms):
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, ms=3, lw=1.2, color="#3b6ea8")
        if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
            ax.set_yscale("log")
        ax.set_title(k, fontsize=10, loc="left")
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return terms


def _table(head: list[str], rows: list[list[str]], cls: str = "", row_classes: list[str] | None = None) -> str:
    out = [f'<table class="{_e(cls)}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        rc = row_classes[i] if row_classes else ""
        out.append(f'<tr class="{_e(rc)}">' + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _metrics_section(data: dict) -> str:
    from spade_tts.evaluation.evaluate import table_rows

    head, rows = table_rows(data)
    cells = []
    for r in rows:
        row = []
        for h, c in zip(head, r):
            if "[" in c and "CI" in h:
                point, _, ci = c.partition(" ")
                row.append(f'{_e(point)} <span class="ci">{_e(ci)}</span>')
            else:
                row.append(_e(c))
        cells.append(row)
    classes = ["model-row first-model" if i == 0 else "model-row" for i in range(len(rows))]
    models = "".join(f"<li><b>{_e(m['label'])}</b>: {_e(m['model'])} ({_e(m['items'])} items, "
                     f"{_e(m['guard_hits'])} phones cut by the length guard, {_e(m['truncated'])} items truncated)</li>"
                     for m in data["models"])
    mach = data.get("machine", {})
    m0 = data["models"][0] if data["models"] else {}
    kind = m0.get("peak_mem_kind", "")
    if kind.startswith("cuda"):
        mem_note = "CUDA peak allocated bytes after a reset (weights, KV cache, activations)"
    elif m0.get("isolated"):
        mem_note = ("peak resident memory (RSS) of a fresh process that loaded only this model and synthesized the "
                    "items (includes Python and torch themselves)")
    else:
        mem_note = ("peak resident memory (RSS) of the evaluating process while the model loaded and synthesized "
                    "(includes Python, torch and the already-loaded ASR, speaker and DNSMOS models)")
    return f"""
<h2>Metrics</h2>
{_table(head, cells, "metrics", classes)}
<p class="note">Items: {_e(data['items']['count'])} ({_e(data['items']['source'])}). ASR: {_e(data.get('asr'))}.
WER and CER: mean of per-utterance rates after lower-casing and stripping punctuation except apostrophes
(Seed-TTS-eval); WER&lt;=100 %: the same with each item capped at 100 %, so that a few items Whisper fills with
hallucinated words cannot decide a comparison.
SIM: speaker cosine (resemblyzer GE2E) of the output against the prompt. DNSMOS P.808 and OVRL: predicted MOS.
RTF: seconds per second of audio, batch 1, after warm-up, median over timed runs; LM = decode loop only,
e2e = whole synthesis call. Deltas: against the first model; WER/CER in percentage points, with paired
bootstrap 95 % intervals over items. Memory: {_e(mem_note)}.
Machine: {_e(mach.get('cpu'))}, {_e(mach.get('cpu_cores'))} cores, {_e(mach.get('gpu', 'no GPU'))},
device {_e(mach.get('device'))}, torch {_e(mach.get('torch'))}, {_e(mach.get('dtype'))}.</p>
<ul class="note">{models}</ul>"""


def pruning_record(data: dict, scores: dict) -> tuple[list[str], dict] | None:
    """The evaluated models pruned from the scored one: their labels and ``spade_pruning.json``.

    The report marks the layers a pruned model lost, so the ranking can be read next to the
    cut it led to. A record is used only when it was cut from the scored model (same depth,
    and the same fingerprint where both are known), so another model's layers are never
    marked; models with the same removed set (pruned, then distilled) share one record.
    """
    from spade_tts.pruning.prune import PRUNING_FILE

    found, labels = None, []
    for m in data.get("models") or []:
        path = Path(str(m.get("model") or "")) / PRUNING_FILE
        try:
            rec = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("removed"), list) \
                or rec.get("teacher_layers") != scores.get("num_layers"):
            continue
        ours, theirs = scores.get("model_fingerprint"), rec.get("source_fingerprint")
        if ours and theirs and ours != theirs:
            continue
        found = found or rec
        if sorted(rec["removed"]) == sorted(found["removed"]):
            labels.append(str(m["label"]))
    return (labels, found) if found else None


def plottable_metrics(scores: dict) -> list[str]:
    """The metrics of a scores file with a number for every layer (what the chart can draw)."""
    layers = scores.get("layers") or []
    return [m for m in scores.get("metrics") or []
            if layers and all(isinstance(r.get(m), (int, float)) and not isinstance(r.get(m), bool) for r in layers)]


def _wer_note(scores: dict, data: dict) -> str:
    """Why the full model's WER here differs from the metrics table: other items, other averaging."""
    full = scores.get("full_wer")
    if full is None:
        return ""
    cap, plain = scores.get("item_wer_cap"), scores.get("full_wer_uncapped")
    note = f"Full-model WER here: {100 * full:.1f} % over {scores.get('items', '?')} scoring items"
    if cap:
        note += f", each item's WER capped at {100 * cap:.0f} % before averaging"
        if plain is not None:
            note += f" (plain mean {100 * plain:.1f} %)"
    else:
        note += " (plain mean, no cap)"
    note += "."
    first = (data.get("models") or [None])[0]
    if first and first.get("wer") is not None:
        capped = first.get("wer_capped")
        note += (f" The metrics table above gives {first['label']} {100 * first['wer']:.1f} % (WER %), the plain "
                 f"mean over its {first.get('items', '?')} evaluation items"
                 + (f"; capped at 100 % it is {100 * capped:.1f} % (WER<=100 %)" if capped is not None else "")
                 + ". spade score speaks its own items in batches, spade eval its own items one at a time, "
                   "so the two figures need not agree.")
    return note


def _scores_section(scores: dict, png_rel: str | None, data: dict | None = None,
                    pruning: tuple[list[str], dict] | None = None) -> str:
    metrics = list(scores.get("metrics") or [])
    layers = scores.get("layers") or []
    metrics = [m for m in metrics if any(m in row for row in layers)] or \
        [k for k in METRICS if any(k in row for row in layers)]
    removed = set(pruning[1]["removed"]) if pruning else set()
    rows = [[_e(row.get("layer"))] + [_e("-" if row.get(m) is None else f"{row[m]:.4f}") for m in metrics]
            + (["removed" if row.get("layer") in removed else "kept"] if pruning else [])
            for row in layers]
    parts = ["<h2>Layer importance</h2>"]
    if png_rel:
        parts.append(f'<img class="chart" src="{_e(quote(png_rel))}" alt="layer importance chart">')
    parts.append(f'<p class="note">{_e(scores.get("num_layers", len(layers)))} decoder layers. WLI = WER of the '
                 "model with that layer skipped (higher = more important). "
                 f"{_e(_wer_note(scores, data or {}))}</p>")
    if pruning:
        labels, rec = pruning
        shown = "grey rows and grey hatched bars" if png_rel else "grey rows"
        parts.append(f'<p class="note">{_e(shown.capitalize())}: the {len(rec["removed"])} layers '
                     f'{_e(sorted(rec["removed"]))} removed in {_e(", ".join(labels))} (ranked by '
                     f'{_e(rec.get("metric", "?"))}, from spade_pruning.json); kept {_e(rec.get("kept"))}.</p>')
    if rows:
        head = ["layer"] + metrics + ([f"in {', '.join(pruning[0])}"] if pruning else [])
        classes = ["removed-layer" if row.get("layer") in removed else "" for row in layers]
        parts.append(_table(head, rows, "scores", classes))
    cut = scores.get("cut_to_keep") or {}
    if cut:
        crow = [[_e(m), _e(", ".join(str(x) for x in sel.get("keep", []))),
                 _e("-" if sel.get("wer") is None else f"{100 * sel['wer']:.1f}")] for m, sel in cut.items()]
        parts.append('<p class="note">The model cut to the kept layers by each metric, before distillation:</p>')
        parts.append(_table(["ranked by", "kept layers", "WER %"], crow, "cut"))
    return "\n".join(parts)


def _copy(src: str | Path | None, dst: Path) -> bool:
    if not src or not Path(src).is_file():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists() or dst.stat().st_size != Path(src).stat().st_size or dst.stat().st_mtime < Path(src).stat().st_mtime:
        shutil.copy2(src, dst)
    return True


def _audio_cell(rel: str | None, caption: str = "") -> str:
    if rel is None:
        return '<span class="score">(audio missing)</span>'
    return f'<audio controls preload="metadata" src="{_e(quote(rel))}"></audio>{caption}'


def listen_rows(items: list[dict], sentences: int) -> list[dict]:
    """The items to play: every voice and every distinct sentence before any repeat.

    Eval items often share sentences across voices (the quick demo: 7 voices reading 2
    sentences), so the first N in order would repeat sentences and leave voices unheard.
    Items are taken in order in passes: new voice and new sentence, then new voice, then new
    sentence, then the rest. At least one row per voice is shown, even when ``sentences`` is
    smaller, so that no voice is left out.
    """
    def text(it: dict) -> str:
        return " ".join(str(it.get("text") or "").lower().split())

    n = max(sentences, len({it.get("speaker") for it in items if it.get("speaker")}))
    chosen: list[int] = []
    voices, texts = set(), set()
    for wanted in (lambda it: it.get("speaker") not in voices and text(it) not in texts,
                   lambda it: it.get("speaker") not in voices,
                   lambda it: text(it) not in texts,
                   lambda it: True):
        for i, it in enumerate(items):
            if len(chosen) < n and i not in chosen and wanted(it):
                chosen.append(i)
                voices.add(it.get("speaker"))
                texts.add(text(it))
    return [items[i] for i in chosen]


def _audio_section(data: dict, out: Path, sentences: int) -> str:
    from spade_tts.evaluation.items import safe_name

    models = data["models"]
    if not models or sentences <= 0:
        return ""
    by_model = [{r["id"]: r for r in m["per_item"]} for m in models]
    common = [r for r in models[0]["per_item"] if all(r["id"] in b for b in by_model)]
    ids = [r["id"] for r in listen_rows(common, sentences)]
    head = ["text", "prompt"] + [m["label"] for m in models]
    rows = []
    for uid in ids:
        first = by_model[0][uid]
        name = safe_name(uid) + ".wav"
        prel = f"audio/prompt/{name}"
        cells = [f'<div class="text">{_e(first["text"])}</div><div class="score">{_e(uid)}</div>',
                 _audio_cell(prel if _copy(first.get("prompt_wav"), out / prel) else None,
                             f'<div class="hyp">{_e(first.get("prompt_text"))}</div>')]
        for m, b in zip(models, by_model):
            r = b[uid]
            rel = f"audio/{safe_name(m['label'])}/{name}"
            ok = _copy(r.get("wav"), out / rel)
            sim = "-" if r.get("sim") is None else f"{r['sim']:.3f}"
            wer_pct = "-" if r.get("wer") is None else f"{100 * r['wer']:.0f}"
            secs = f"{r.get('seconds') or 0:.1f}"
            cap = (f'<div class="hyp">&ldquo;{_e(r.get("transcript"))}&rdquo;</div>'
                   f'<div class="score">WER {_e(wer_pct)} % &middot; SIM {_e(sim)} &middot; {_e(secs)} s</div>')
            cells.append(_audio_cell(rel if ok else None, cap))
        rows.append(cells)
    return (f"<h2>Listen</h2><p class=\"note\">The same {len(ids)} sentence(s) from every model, in the voice of the "
            "prompt; under each player: Whisper's transcript, its WER and the speaker cosine to the prompt.</p>"
            + _table(head, rows, "audio", ["audio-row"] * len(rows)))


def write_report(out_dir: str | Path, eval_json, scores_json=None, distill_log_jsonl=None,
                 importance_png: str | Path | None = None, sentences: int = 6,
                 title: str = "spade-tts compression report") -> Path:
    """Write ``out_dir/index.html`` (plus ``assets/`` and ``audio/``); returns its path.

    ``eval_json``: a ``spade-eval/1`` dict or file from `spade eval`. ``scores_json``: a
    ``spade-scores/1`` dict or file from `spade score`; its chart is ``importance_png`` or, by
    default, the ``importance.png`` next to the scores file, which is redrawn with the removed layers
    marked when an evaluated model's folder holds a ``spade_pruning.json`` cut from the scored model
    (a chart given as ``importance_png`` is shown as it is). ``sentences``: rows to listen to, at
    least one per voice. ``distill_log_jsonl``: a training log, one JSON dict per line with
    ``step`` and loss terms (``loss``, ``ce``, ``kd``, ...).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _load_json(eval_json, "eval results")
    if data.get("format") != "spade-eval/1":
        raise ValueError(f"eval results have format {data.get('format')!r}, not 'spade-eval/1': pass `spade eval --json` output")
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="meta">{_e(data.get("created", ""))} &middot; models: '
            f'{_e(", ".join(m["label"] for m in data["models"]))}</p>',
            _metrics_section(data)]
    if scores_json is not None:
        scores = _load_json(scores_json, "layer scores")
        chart_given = importance_png is not None  # the user's own chart is shown as it is
        if importance_png is None and not isinstance(scores_json, dict):
            guess = Path(scores_json).with_name("importance.png")
            importance_png = guess if guess.is_file() else None
        png_rel = None
        pruning = pruning_record(data, scores)
        metrics = plottable_metrics(scores)
        if pruning and metrics and not chart_given:  # redraw `spade score`'s chart with the removed layers marked
            from spade_tts.importance.plots import plot_importance

            png_rel = "assets/importance.png"
            (out / "assets").mkdir(parents=True, exist_ok=True)
            plot_importance(out / png_rel, scores["layers"], metrics, scores.get("full_wer"),
                            removed=pruning[1]["removed"], removed_label=f"removed in {', '.join(pruning[0])}")
        elif importance_png is not None:
            if not Path(importance_png).is_file():
                raise FileNotFoundError(f"importance chart {importance_png} not found")
            png_rel = "assets/importance.png"
            _copy(importance_png, out / png_rel)
        body.append(_scores_section(scores, png_rel, data, pruning))
    if distill_log_jsonl is not None:
        rows = read_loss_log(distill_log_jsonl)
        terms = plot_losses(rows, out / "assets" / "distill_loss.png") if rows else []
        body.append("<h2>Distillation</h2>")
        if terms:
            last = rows[-1]
            body.append('<img class="chart" src="assets/distill_loss.png" alt="distillation loss curves">')
            body.append(f'<p class="note">{len(rows)} logged steps, last step {_e(last["step"])}: '
                        + ", ".join(f"{_e(k)} {_e(f'{last[k]:.4g}' if isinstance(last.get(k), (int, float)) else '-')}"
                                    for k in terms) + "</p>")
        else:
            body.append('<p class="note">The log holds no loss values yet.</p>')
    body.append(_audio_section(data, out, sentences))
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body>\n' + "\n".join(body) + "\n</body></html>\n")
    index = out / "index.html"
    write_text(index, page)
    write_json(out / "eval.json", data)  # the numbers travel with the page
    return index


@dataclass
class ReportConfig:
    """`spade report`: the inputs of :func:`write_report`, as a stage config."""

    eval: str = ""  # spade-eval/1 results from `spade eval --json`
    scores: str = ""  # spade-scores/1 layer scores from `spade score` (its importance.png is picked up next to it)
    importance_png: str = ""  # the layer-importance chart, if not next to the scores file
    distill_log: str = ""  # distillation training log (JSONL, e.g. runs/distill/train_log.jsonl)
    out: str = ""  # report folder (index.html is written there)
    sentences: int = 6  # sentences to play side by side
    title: str = "spade-tts compression report"  # the page's heading


def report(cfg: ReportConfig) -> Path:
    """`spade report`: write the report; the results come first among the inputs a user can get wrong."""
    if not cfg.eval:
        raise ValueError("no eval results: give --eval FILE.json (written by `spade eval --json`)")
    if not cfg.out:
        raise ValueError("no report folder: give -o DIR")
    index = write_report(cfg.out, cfg.eval, cfg.scores or None, cfg.distill_log or None, cfg.importance_png or None,
                         sentences=cfg.sentences, title=cfg.title)
    print(f"wrote {index} (open it in a browser; the folder is self-contained)")
    return index
