"""`spade data build`: a multi-speaker English corpus with phone timings, made offline.

Work is cut into chunks (one voice, <= ``chunk_size`` sentences); a chunk's wavs are written
first and its manifest part last, atomically, so a killed build resumes at the first chunk
without a part and never trusts a half-written one. The final manifests are merged from the
parts; rerunning a finished build only re-merges.
"""
from __future__ import annotations

import json
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spade_tts.audio import save_wav, to_mono_16k
from spade_tts.data.sentences import load_sentences, split_sentences
from spade_tts.data.voices import VOICES, synthesize
from spade_tts.io import write_text

HELDOUT_LIST = Path(__file__).with_name("heldout_sentences.txt")


@dataclass
class DataConfig:
    out_dir: str = "data/corpus"
    voices: list[str] = field(default_factory=lambda: list(VOICES))
    train_per_voice: int = 3000  # sentences each voice reads for training
    heldout: int = 200  # held-out sentences, read by every voice
    seed: int = 0
    chunk_size: int = 50
    workers: int = 2
    peak: float = 0.9  # every clip is peak-normalised so that voices differ in timbre, not level


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def heldout_sentences(all_sentences: list[str], cfg: DataConfig) -> tuple[list[str], list[str]]:
    """The committed held-out list wins, so the evaluation set never drifts with the text source."""
    if HELDOUT_LIST.is_file() and cfg.heldout <= 200:
        fixed = [s for s in HELDOUT_LIST.read_text().splitlines() if s.strip()]
        held = fixed[: cfg.heldout]
        banned = set(fixed)
        return [s for s in all_sentences if s not in banned], held
    return split_sentences(all_sentences, cfg.heldout, cfg.seed)


def plan_chunks(cfg: DataConfig) -> list[dict]:
    train, held = heldout_sentences(load_sentences(), cfg)
    if cfg.train_per_voice > len(train):
        raise ValueError(f"train_per_voice={cfg.train_per_voice} exceeds the {len(train)} training sentences available")
    chunks = []
    for v_index, voice in enumerate(cfg.voices):
        if voice not in VOICES:
            raise ValueError(f"unknown voice {voice!r}; choose from {', '.join(VOICES)}")
        picks = random.Random(cfg.seed * 1000 + v_index).sample(range(len(train)), cfg.train_per_voice)
        items = [("train", f"{voice}-t{i:05d}", train[i]) for i in sorted(picks)]
        items += [("heldout", f"{voice}-h{i:03d}", s) for i, s in enumerate(held)]
        for k in range(0, len(items), cfg.chunk_size):
            chunks.append({"voice": voice, "index": k // cfg.chunk_size, "items": items[k : k + cfg.chunk_size]})
    return chunks


def _run_chunk(out_dir: str, chunk: dict, peak: float) -> int:
    out = Path(out_dir)
    voice = chunk["voice"]
    (out / "wav" / voice).mkdir(parents=True, exist_ok=True)
    utts = synthesize([text for _, _, text in chunk["items"]], voice)
    rows = []
    for (split, uid, text), utt in zip(chunk["items"], utts):
        audio = to_mono_16k(utt.audio, utt.sample_rate)
        audio = audio * (peak / max(float(np.abs(audio).max()), 1e-6))
        rel = f"wav/{voice}/{uid}.wav"
        save_wav(out / rel, audio, 16000)
        seconds = len(audio) / 16000
        phones = None
        if utt.phones:
            phones = [[p, round(min(end, seconds), 4)] for p, end in utt.phones]
        rows.append({"id": uid, "speaker": voice, "text": text, "audio": rel, "seconds": round(seconds, 4),
                     "split": split, "phones": phones})
    write_jsonl_atomic(out / "parts" / f"{voice}_{chunk['index']:04d}.jsonl", rows)
    return len(rows)


def build_corpus(cfg: DataConfig) -> dict:
    out = Path(cfg.out_dir)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    chunks = plan_chunks(cfg)
    todo = [c for c in chunks if not (out / "parts" / f"{c['voice']}_{c['index']:04d}.jsonl").exists()]
    start = time.time()
    if todo:
        print(f"building {sum(len(c['items']) for c in todo)} utterances in {len(todo)} chunks "
              f"({len(chunks) - len(todo)} chunks already done) -> {out}")
        with ProcessPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
            futures = [pool.submit(_run_chunk, str(out), c, cfg.peak) for c in todo]
            with tqdm(total=sum(len(c["items"]) for c in todo), unit="utt", desc="synthesizing") as bar:
                for fut in futures:
                    bar.update(fut.result())
    rows = []
    for c in chunks:
        rows += read_jsonl(out / "parts" / f"{c['voice']}_{c['index']:04d}.jsonl")
    (out / "manifests").mkdir(exist_ok=True)
    summary = {"build_seconds": round(time.time() - start, 1), "voices": cfg.voices}
    for split in ("train", "heldout"):
        part = [r for r in rows if r["split"] == split]
        write_jsonl_atomic(out / "manifests" / f"{split}.jsonl", part)
        summary[split] = {"utterances": len(part), "hours": round(sum(r["seconds"] for r in part) / 3600, 2),
                          "sentences": len({r["text"] for r in part})}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
