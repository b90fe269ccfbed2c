"""Evaluation items: a prompt (audio + its transcript) and a target text to speak in its voice.

Two sources give the same item dicts, so every model and every metric sees one format:

* the built-in held-out set (``heldout_items`` of the corpus: a held-out sentence spoken in
  the voice of another held-out utterance of the same speaker);
* a Seed-TTS-eval style list file, one item a line::

      id|prompt_text|prompt_wav|target_text

  ``prompt_wav`` is relative to the list file (absolute paths work too). An optional fifth
  field (the ground-truth recording of the target, as in some Seed-TTS-eval lists) is kept
  as ``reference_wav`` and not needed. Blank lines and lines starting with ``#`` are skipped.

Item dict: ``{"id", "speaker", "prompt_text", "prompt_wav" (absolute path), "target_text",
"reference_wav" (or None), "reference_seconds" (or None)}``.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

FIELDS = "id|prompt_text|prompt_wav|target_text"


class ItemsError(ValueError):
    """A list file that cannot be used; the message names the file, the line and the fix."""


def heldout_eval_items(corpus_dir: str | Path, per_speaker: int, max_prompt_seconds: float, seed: int) -> list[dict]:
    """The built-in held-out set as evaluation items (see ``spade_tts.reference.evaluate.heldout_items``)."""
    from spade_tts.reference.evaluate import heldout_items

    corpus = Path(corpus_dir).resolve()
    items = []
    for it in heldout_items(corpus, per_speaker, max_prompt_seconds, seed):
        items.append({"id": it["target"]["id"], "speaker": it["speaker"], "prompt_id": it["prompt"]["id"],
                      "prompt_text": it["prompt"]["text"], "prompt_wav": str(corpus / it["prompt"]["audio"]),
                      "target_text": it["target"]["text"],
                      "reference_wav": str(corpus / it["target"]["audio"]),
                      "reference_seconds": it["target"]["seconds"]})
    if not items:
        raise ItemsError(f"no phone-aligned held-out items in {corpus}: build the corpus with aligned voices "
                         "(`spade data build`) or pass items_file=LIST")
    return items


def _line_error(path: Path, lineno: int, msg: str) -> str:
    return f"{path} line {lineno}: {msg}"


def parse_items_file(path: str | Path, check_audio: bool = True) -> list[dict]:
    """Read a ``id|prompt_text|prompt_wav|target_text`` list; every bad line is an ItemsError.

    All lines are checked before anything is raised, so one run shows the first problem and
    how many other lines have one; the error is a single line.
    """
    from spade_tts.text import normalize_for_wer

    p = Path(path)
    if not p.is_file():
        raise ItemsError(f"items file {p} not found: pass a list with one {FIELDS} item per line")
    base = p.resolve().parent
    items, errors, seen = [], [], {}
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ItemsError(f"items file {p} is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8") from None
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) not in (4, 5):
            errors.append(_line_error(p, lineno, f"expected 4 fields {FIELDS} separated by '|', got {len(fields)}"))
            continue
        uid, ptext, pwav, ttext = fields[:4]
        empty = [name for name, v in zip(FIELDS.split("|"), fields[:4]) if not v]
        if empty:
            errors.append(_line_error(p, lineno, f"empty field(s) {', '.join(empty)} (format {FIELDS})"))
            continue
        if uid in seen:
            errors.append(_line_error(p, lineno, f"id {uid!r} already used on line {seen[uid]}: ids must be unique"))
            continue
        seen[uid] = lineno
        if not normalize_for_wer(ttext).strip():
            errors.append(_line_error(p, lineno, f"target text {ttext!r} has no words to score"))
            continue
        wav = Path(pwav) if Path(pwav).is_absolute() else base / pwav
        if check_audio and not wav.is_file():
            errors.append(_line_error(p, lineno, f"prompt wav {pwav!r} not found (looked for {wav}; "
                                                 "relative paths start at the list file's folder)"))
            continue
        ref = None
        if len(fields) == 5 and fields[4]:
            ref = str(Path(fields[4]) if Path(fields[4]).is_absolute() else base / fields[4])
        items.append({"id": uid, "speaker": None, "prompt_id": None, "prompt_text": ptext, "prompt_wav": str(wav),
                      "target_text": ttext, "reference_wav": ref, "reference_seconds": None})
    if errors:
        more = ""
        if len(errors) > 1:
            rest = [e.split(" line ", 1)[1].split(":", 1)[0] for e in errors[1:]]
            more = f" (and {len(errors) - 1} more bad line(s): {', '.join(rest[:10])}{', ...' if len(rest) > 10 else ''})"
        raise ItemsError(errors[0] + more)
    if not items:
        raise ItemsError(f"items file {p} holds no items: write one {FIELDS} per line")
    return items


def items_signature(items: list[dict]) -> str:
    """A digest of what is asked (ids, texts, prompt files and their sizes): same items, same digest."""
    h = hashlib.sha256()
    for it in items:
        wav = Path(it["prompt_wav"])
        size = wav.stat().st_size if wav.is_file() else -1
        h.update(f"{it['id']}|{it['prompt_text']}|{wav}|{size}|{it['target_text']}\n".encode())
    return h.hexdigest()[:16]


def safe_name(text: str) -> str:
    """A file or folder name made from an id or label: letters, digits, '.', '_', '-' only."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return name or "item"
