"""Evaluation items: a prompt (audio + its transcript) and a target text to speak in its voice.

Three sources give the same item dicts, so every model, every metric and every stage (`spade
eval`, `spade score`) sees one format:

* the built-in held-out set (``heldout_pairs`` of the corpus: a held-out sentence spoken in
  the voice of another held-out utterance of the same speaker);
* a manifest of the user's own data (``--data``, JSONL rows with ``audio``, ``text``, ``speaker``;
  the format of ``spade data family``): the same pairing within each speaker;
* a Seed-TTS-eval style list file, one item a line::

      id|prompt_text|prompt_wav|target_text

  ``prompt_wav`` is relative to the list file (absolute paths work too). An optional fifth
  field (the ground-truth recording of the target, as in some Seed-TTS-eval lists) is kept
  as ``reference_wav`` and not needed. Blank lines and lines starting with ``#`` are skipped.

Item dict: ``{"id", "speaker", "prompt_id", "prompt_text", "prompt_wav" (absolute path),
"target_text", "reference_wav" (or None), "reference_seconds" (or None), "prompt_phones",
"target_phones" (phone timings where the corpus has them, else None)}``. ``reference_wav`` is the
recorded target, which the teacher-forced importance metrics read.
"""
from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

FIELDS = "id|prompt_text|prompt_wav|target_text"


class ItemsError(ValueError):
    """A list file that cannot be used; the message names the file, the line and the fix."""


def speaker_pairs(rows: list[dict], per_speaker: int, max_prompt_seconds: float, seed: int) -> list[tuple[dict, dict]]:
    """(prompt row, target row) pairs: ``per_speaker`` targets of each speaker, each prompted by another
    utterance of that speaker no longer than ``max_prompt_seconds``, all fixed by ``seed``.

    Rows need ``id``, ``speaker`` and ``seconds``; speakers with a single utterance give no pair.
    """
    by_spk: dict[str, list[dict]] = {}
    for r in rows:
        by_spk.setdefault(r["speaker"], []).append(r)
    pairs = []
    for spk in sorted(by_spk):
        spk_rows = by_spk[spk]
        rng = random.Random(f"{seed}-{spk}")
        short = [r for r in spk_rows if r["seconds"] <= max_prompt_seconds]
        for target in rng.sample(spk_rows, min(per_speaker, len(spk_rows))):
            options = [r for r in short if r["id"] != target["id"]]
            if options:
                pairs.append((rng.choice(options), target))
    return pairs


def _item(prompt: dict, target: dict, base: Path) -> dict:
    return {"id": target["id"], "speaker": target["speaker"], "prompt_id": prompt["id"],
            "prompt_text": prompt["text"], "prompt_wav": str(base / prompt["audio"]),
            "target_text": target["text"], "reference_wav": str(base / target["audio"]),
            "reference_seconds": target["seconds"], "prompt_phones": prompt.get("phones"),
            "target_phones": target.get("phones"), "prompt_extra": _extra(prompt), "target_extra": _extra(target)}


def _extra(row: dict) -> dict:
    """What a manifest row gives beyond audio and text (precomputed codes, word timings, features), which the
    family's training layout may need for the teacher-forced metrics (OuteTTS 1.0 needs the word timings)."""
    return {k: row[k] for k in ("codes", "words", "features") if k in row}


def heldout_eval_items(corpus_dir: str | Path, per_speaker: int, max_prompt_seconds: float, seed: int) -> list[dict]:
    """The built-in corpus's held-out set as items: phone-aligned voices only (the teacher-forced
    metrics of the built-in model need the phone timings)."""
    from spade_tts.data.build import read_jsonl

    corpus = Path(corpus_dir).resolve()
    manifest = corpus / "manifests" / "heldout.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found; run `spade data build` first (or pass data=MANIFEST)")
    rows = [r for r in read_jsonl(manifest) if r.get("phones")]
    items = [_item(p, t, corpus) for p, t in speaker_pairs(rows, per_speaker, max_prompt_seconds, seed)]
    if not items:
        raise ItemsError(f"no phone-aligned held-out items in {corpus}: build the corpus with aligned voices "
                         "(`spade data build`) or pass items_file=LIST / data=MANIFEST")
    return items


def manifest_items(manifest: str | Path, per_speaker: int, max_prompt_seconds: float, seed: int) -> list[dict]:
    """Items from a JSONL manifest of the user's data: rows with audio, paired within each speaker."""
    import soundfile as sf

    from spade_tts.families.data import read_manifest

    rows = []
    for r in read_manifest(manifest):
        if "audio" not in r:
            continue  # codes-only rows train, but cannot prompt a voice or be listened to
        rows.append({**r, "id": str(r.get("id") or f"line{r['_line']}"), "speaker": str(r["speaker"]),
                     "seconds": sf.info(r["audio"]).duration})
    if not rows:
        raise ItemsError(f"{manifest} has no rows with \"audio\": synthesis needs real prompts (and targets to "
                         "compare with); add audio files to the manifest")
    items = [_item(p, t, Path("/")) for p, t in speaker_pairs(rows, per_speaker, max_prompt_seconds, seed)]
    if not items:
        raise ItemsError(f"{manifest}: no speaker has two utterances with a prompt of at most {max_prompt_seconds} s; "
                         "each item is a target spoken in the voice of another utterance of its speaker")
    return items


def select_items(items_file: str, data: str, corpus_dir: str | Path, per_speaker: int, max_prompt_seconds: float,
                 seed: int, max_items: int = 0) -> tuple[list[dict], str]:
    """The items of a run and a line saying where they came from: a list file, else a manifest, else the
    built-in held-out set; the first ``max_items`` of them when that is > 0."""
    if items_file and data:
        raise ValueError("give items_file=LIST or data=MANIFEST, not both")
    if items_file:
        items, source = parse_items_file(items_file), f"file:{Path(items_file).resolve()}"
    elif data:
        items = manifest_items(data, per_speaker, max_prompt_seconds, seed)
        source = f"manifest:{Path(data).resolve()} (items_per_speaker={per_speaker}, seed={seed})"
    else:
        items = heldout_eval_items(corpus_dir, per_speaker, max_prompt_seconds, seed)
        source = f"heldout:{Path(corpus_dir).resolve()} (items_per_speaker={per_speaker}, seed={seed})"
    return (items[:max_items] if max_items > 0 else items), source


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
                      "target_text": ttext, "reference_wav": ref, "reference_seconds": None, "prompt_phones": None,
                      "target_phones": None})
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
