"""The built-in model's distillation data: (prompt, target) sequences from a fixed subset of its training data.

Made from the tokenized corpus (``data/reference_tokens``) exactly as the teacher's own trainer
builds its pairs, but from a fixed random ``fraction`` of the teacher's training utterances
(SPADE: under 5 %). It is built once, into a temporary folder renamed into place, and reused by
every later run with the same settings. ``BuiltinSpeechLM.distill_data`` hands it to `spade distill`.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np

from spade_tts.distill.data import DATA_FORMAT, META_FILE, check_fraction, write_token_dataset
from spade_tts.io import digest


def select_utterances(items: list[dict], fraction: float, seed: int, split: str = "train") -> list[int]:
    """A fixed random ``fraction`` of the ``split`` utterances (indices into ``items``), sorted."""
    check_fraction(fraction)
    pool = [i for i, it in enumerate(items) if it.get("split") == split]
    if not pool:
        raise ValueError(f"no {split!r} utterances to choose from")
    k = max(1, int(round(fraction * len(pool))))
    chosen = np.random.default_rng(seed).permutation(len(pool))[:k]
    return sorted(pool[i] for i in chosen)


def _tokens_digest(tokens_dir: Path) -> str:
    """The tokenized corpus's index and the size of its token file (reading 10+ MB of tokens to hash them buys nothing)."""
    return digest(tokens_dir / "index.json", str((tokens_dir / "tokens.safetensors").stat().st_size))


def build_reference_dataset(tokens_dir: str | Path, out_root: str | Path, fraction: float = 0.05, seed: int = 0,
                            pairs_per_target: int = 2, max_prompt_seconds: float = 4.0,
                            max_target_seconds: float = 7.5, shard_rows: int = 2000, split: str = "train",
                            prompt_loss: bool = False) -> Path:
    """(prompt, target) sequences of the built-in model from a fixed subset of its training utterances.

    Targets and prompts both come from the subset (so the hours reported are all the audio the
    student ever sees); each target gets ``pairs_per_target`` prompts, other utterances of its
    speaker, as in the teacher's trainer. Returns the dataset folder, reusing it when it exists.
    ``split="heldout"`` builds the same kind of sequences from the teacher's held-out utterances,
    which neither model trained on: what the distillation's held-out loss is measured on.
    ``prompt_loss``: label the prompt's speech too (only for a teacher trained that way, as attempt 1 was);
    otherwise the losses count from the target on.
    """
    from spade_tts.reference.dataset import TokenStore
    from spade_tts.reference.vocab import Vocab

    check_fraction(fraction)
    if pairs_per_target < 1:
        raise ValueError(f"pairs_per_target={pairs_per_target} must be >= 1")
    tokens_dir = Path(tokens_dir)
    if not (tokens_dir / "tokens.safetensors").is_file() or not (tokens_dir / "index.json").is_file():
        raise FileNotFoundError(f"no tokenized corpus in {tokens_dir}: expected tokens.safetensors and index.json "
                                "(made by `spade train-reference`)")
    settings = {"source": "reference_tokens", "tokens_digest": _tokens_digest(tokens_dir), "fraction": fraction,
                "seed": seed, "pairs_per_target": pairs_per_target, "max_prompt_seconds": max_prompt_seconds,
                "max_target_seconds": max_target_seconds, "format": DATA_FORMAT}
    if split != "train":  # (train folders keep the names they had before splits existed)
        settings["split"] = split
    settings["prompt_loss"] = prompt_loss  # (folders built before the key labelled the prompt: not reused)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    name = "reference" if split == "train" else f"reference-{split}"
    out = Path(out_root) / f"{name}-f{fraction:g}-s{seed}-{key}"
    if (out / META_FILE).is_file():
        return out

    store = TokenStore(tokens_dir)
    vocab = Vocab(store.num_speech)
    items = store.items
    chosen = select_utterances(items, fraction, seed, split)
    train = [i for i, it in enumerate(items) if it.get("split") == split]
    prompts: dict[str, list[int]] = {}
    for i in chosen:
        if items[i]["seconds"] <= max_prompt_seconds:
            prompts.setdefault(items[i]["speaker"], []).append(i)
    rng = random.Random(seed)
    rows: dict[str, list] = {"input_ids": [], "loss_from": [], "target": [], "prompt": []}
    for t in chosen:
        pool = [p for p in prompts.get(items[t]["speaker"], []) if p != t]
        if items[t]["seconds"] > max_target_seconds or not pool:
            continue
        for _ in range(pairs_per_target):
            p = rng.choice(pool)
            ids, loss_from = vocab.training_ids(store.phones(p).tolist(), store.phones(t).tolist(), store.codes(p),
                                                store.codes(t), store.frames(t).tolist(),
                                                prompt_loss=prompt_loss)
            rows["input_ids"].append(ids)
            rows["loss_from"].append(loss_from)
            rows["target"].append(items[t]["id"])
            rows["prompt"].append(items[p]["id"])
    hours = sum(items[i]["seconds"] for i in chosen) / 3600
    total_hours = sum(items[i]["seconds"] for i in train) / 3600
    meta = {
        **settings, "pad_id": vocab.pad, "vocab_size": vocab.size, "utterances_used": len(chosen),
        "utterances_total": len(train), "percent_utterances": round(100 * len(chosen) / len(train), 3),
        "seconds_used": round(hours * 3600, 3), "seconds_total": round(total_hours * 3600, 3),
        "hours_used": round(hours, 4), "hours_total": round(total_hours, 4),
        "percent_hours": round(100 * hours / total_hours, 3) if total_hours else None,
        "targets": len(set(rows["target"])),
    }
    return write_token_dataset(rows, out, meta, shard_rows)
