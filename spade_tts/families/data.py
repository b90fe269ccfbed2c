"""The data hook: (audio, text) pairs of a family -> the token dataset `spade distill` trains on.

Input is a manifest, one JSON object per line::

    {"audio": "wavs/a.wav", "text": "Hello there.", "speaker": "spk1"}
    {"codes": "codes/b.npy", "text": "Good night.", "speaker": "spk1"}
    {"codes": [12, 873, 5], "text": "Hi.", "speaker": "spk2"}
    {"audio": "wavs/c.wav", "text": "Hi there.", "words": [{"word": "Hi", "start": 0.1, "end": 0.3},
                                                           {"word": "there.", "start": 0.3, "end": 0.7}]}

Paths are relative to the manifest. ``words`` (per-word timings in seconds; optional ``features`` per word and
per row) is optional for most families and required by OuteTTS 1.0, whose sequences write every word. ``audio`` is encoded with the family's codec
(:meth:`SpeechLM.encode_audio`, which needs the codec package and weights); ``codes`` (a list or an
``.npy`` file, in the codec's own shape) skips the codec, for users who encoded their data
elsewhere and for tests. Each utterance becomes :meth:`SpeechLM.training_sequence`, with another
utterance of the same speaker as its voice prompt when the family clones voices from a prompt
(``uses_prompt``), chosen by a seeded generator. The result is written by
:func:`spade_tts.distill.data.write_token_dataset`, so ``spade distill dataset=FOLDER`` reads it.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spade_tts.families.base import SpeechLM, Utterance, Word


@dataclass
class FamilyDataConfig:
    """`spade data family`: a family's (audio or codes, text) manifest -> the dataset `spade distill` reads."""

    model: str = ""  # checkpoint folder of the family: its tokenizer, token layout and codec
    family: str = ""  # llasa, orpheus, cosyvoice2, spark-tts, outetts, generic; '' = detect from the folder
    family_config: str = ""  # the generic family's YAML when it is not next to the checkpoint (implies generic)
    manifest: str = ""  # JSONL, one {"audio"|"codes", "text", "speaker"} a line (paths relative to it)
    out: str = ""  # dataset folder to write (`spade distill dataset=FOLDER` reads it)
    prompts_per_target: int = 1  # sequences per target, each with another prompt of its speaker
    use_prompt: bool | None = None  # None = the family's own habit (SpeechLM.uses_prompt)
    seed: int = 0
    max_items: int = 0  # 0 = all utterances of the manifest


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a JSONL manifest, each checked for text and audio-or-codes; paths made absolute."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found (JSONL: one {{\"audio\"|\"codes\", \"text\", \"speaker\"}} a line)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n} is not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise ValueError(f"{path}:{n} needs a non-empty \"text\"")
        if "audio" not in row and "codes" not in row:
            raise ValueError(f"{path}:{n} needs \"audio\" (a file) or \"codes\" (a list or .npy file)")
        for key in ("audio", "codes"):
            if isinstance(row.get(key), str):
                file = Path(row[key]) if Path(row[key]).is_absolute() else path.parent / row[key]
                if not file.is_file():
                    raise FileNotFoundError(f"{path}:{n}: {key} file {file} not found")
                row[key] = str(file)
        row.setdefault("speaker", "")
        row["_line"] = n
        rows.append(row)
    if not rows:
        raise ValueError(f"manifest {path} has no utterances")
    return rows


def parse_words(value) -> list[Word] | None:
    """A row's ``words``: a list of ``{"word", "start", "end"}`` (seconds; optional ``features`` dict), in order."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ValueError('"words" must be a non-empty list of {"word", "start", "end"}')
    words = []
    for n, w in enumerate(value):
        if not isinstance(w, dict) or not isinstance(w.get("word"), str) or not w["word"].strip():
            raise ValueError(f'"words"[{n}] needs a non-empty "word"')
        try:
            start, end = float(w["start"]), float(w["end"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f'"words"[{n}] needs numeric "start" and "end" (seconds)') from None
        if not 0 <= start <= end:
            raise ValueError(f'"words"[{n}] ({w["word"]!r}): need 0 <= start <= end, got {start}..{end}')
        if words and start < words[-1].start:
            raise ValueError(f'"words"[{n}] ({w["word"]!r}) starts before the word ahead of it')
        feats = w.get("features")
        if feats is not None and not isinstance(feats, dict):
            raise ValueError(f'"words"[{n}]["features"] must be an object')
        words.append(Word(w["word"].strip(), start, end, feats))
    return words


def _read_audio(path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    from spade_tts.audio import load_audio

    sr = sf.info(path).samplerate
    return load_audio(path, sample_rate=sr), sr


def utterance_of(speech: SpeechLM, row: dict) -> Utterance:
    """One manifest row as an :class:`Utterance` (codes read, or audio encoded by the family's codec), prepared by
    the family (:meth:`SpeechLM.prepare_utterance`, which sees the row's audio when it has one)."""
    audio, sr = None, 0
    if "codes" in row:
        codes = np.load(row["codes"]) if isinstance(row["codes"], str) else np.asarray(row["codes"], dtype=np.int64)
        if speech.wants_audio and isinstance(row.get("audio"), str):
            audio, sr = _read_audio(row["audio"])
    else:
        audio, sr = _read_audio(row["audio"])
        codes = speech.encode_audio(audio, sr)
    codes = np.asarray(codes, dtype=np.int64)
    speech.codes_to_ids(codes)  # validates shape and range: a bad row fails here, with its line number below
    features = row.get("features")
    if features is not None and not isinstance(features, dict):
        raise ValueError('"features" must be an object')
    phones = row.get("phones")  # [[phone, end seconds], ...]: corpus rows of aligned voices (the builtin family)
    utt = Utterance(text=row["text"].strip(), codes=codes, speaker=str(row.get("speaker", "")),
                    words=parse_words(row.get("words")), features=features,
                    phones=[(str(p), float(e)) for p, e in phones] if phones else None)
    return speech.prepare_utterance(utt, audio, sr)


def load_utterances(speech: SpeechLM, manifest: str | Path, max_items: int = 0) -> list[Utterance]:
    rows = read_manifest(manifest)[: max_items or None]
    out = []
    for row in rows:
        try:
            out.append(utterance_of(speech, row))
        except ValueError as e:
            raise ValueError(f"{manifest}:{row['_line']}: {e}") from None
    return out


def family_sequences(speech: SpeechLM, utterances: list[Utterance], prompts_per_target: int = 1,
                     use_prompt: bool | None = None, seed: int = 0) -> tuple[list[tuple[list[int], int]], list[dict]]:
    """(input_ids, loss_from) per training sequence, and where each came from (target, prompt indices)."""
    if prompts_per_target < 1:
        raise ValueError(f"prompts_per_target={prompts_per_target} must be >= 1")
    use_prompt = speech.uses_prompt if use_prompt is None else use_prompt
    by_speaker: dict[str, list[int]] = {}
    for i, u in enumerate(utterances):
        by_speaker.setdefault(u.speaker, []).append(i)
    rng = random.Random(seed)
    seqs, origin = [], []
    for t, utt in enumerate(utterances):
        pool = [p for p in by_speaker[utt.speaker] if p != t] if use_prompt and utt.speaker else []
        choices = [rng.choice(pool) for _ in range(prompts_per_target)] if pool else [None]
        for p in choices:
            seqs.append(speech.training_sequence(utt, utterances[p] if p is not None else None))
            origin.append({"target": t, "prompt": p})
    return seqs, origin


def build_family_dataset(speech: SpeechLM, cfg: FamilyDataConfig) -> Path:
    """Manifest -> sharded token dataset at ``cfg.out`` (replaced atomically); returns the folder."""
    from spade_tts.distill.data import write_token_dataset

    if not cfg.out:
        raise ValueError("no output folder: give -o/--out FOLDER")
    utts = load_utterances(speech, cfg.manifest, cfg.max_items)
    seqs, origin = family_sequences(speech, utts, cfg.prompts_per_target, cfg.use_prompt, cfg.seed)
    rows = {"input_ids": [s for s, _ in seqs], "loss_from": [lf for _, lf in seqs],
            "target": [str(o["target"]) for o in origin], "prompt": ["" if o["prompt"] is None else str(o["prompt"])
                                                                    for o in origin]}
    meta = {"source": "family-manifest", "family": speech.family, "model": str(speech.path),
            "manifest": str(cfg.manifest), "pad_id": int(speech.pad_id), "vocab_size": int(speech.vocab_size),
            "utterances_used": len(utts), "speakers": len({u.speaker for u in utts}), "seed": cfg.seed,
            "prompts_per_target": cfg.prompts_per_target,
            "with_prompt": sum(o["prompt"] is not None for o in origin)}
    return write_token_dataset(rows, cfg.out, meta)


def family_dataset(cfg: FamilyDataConfig) -> Path:
    """`spade data family`: load ``cfg.model`` as its family and build the dataset; checks what the
    user gave (model, manifest) before what is missing (the output folder)."""
    from spade_tts.families.registry import load_speech_lm

    if not cfg.model:
        raise ValueError("no model: give --model CHECKPOINT_FOLDER (the family's tokenizer and token layout)")
    if not cfg.manifest:
        raise ValueError("no manifest: give --manifest FILE.jsonl (one {\"audio\"|\"codes\", \"text\", \"speaker\"} a line)")
    speech = load_speech_lm(cfg.model, cfg.family or None, family_config=cfg.family_config or None)
    out = build_family_dataset(speech, cfg)
    meta = json.loads((out / "spade_data.json").read_text())
    print(f"{speech.family}: {meta['rows']} sequences, {meta['tokens']} tokens from {meta['utterances_used']} "
          f"utterances ({meta['with_prompt']} with a voice prompt); wrote {out} (spade distill dataset={out})")
    return out
