"""The distillation data: token sequences stored as sharded Arrow, and the order they are read in.

Distillation needs only token sequences (the teacher's outputs are computed on the fly), so a
dataset is a ``datasets`` folder (``save_to_disk``: Arrow shards, memory-mapped when loaded,
so an 8B run over millions of rows reads them the same way as the built-in model's thousands)
with two columns the trainer uses:

* ``input_ids``: one full training sequence of the model (prompt + target), int32;
* ``loss_from``: the position of the last prompt token; labels start after it (the speech part).

and ``spade_data.json`` beside the shards: the pad id, where the rows came from and how much of
the teacher's training data they use. For the built-in model, :func:`build_reference_dataset`
makes one from the tokenized corpus (``data/reference_tokens``) exactly as the teacher's own
trainer builds its pairs, but from a fixed random ``fraction`` of the teacher's training
utterances (SPADE: under 5 %). It is built once, into a temporary folder renamed into place, and
reused by every later run with the same settings.

The read order is a pure function of (seed, position), so a resumed run reads exactly the
batches it would have read, and any number of processes splits each global batch the same way
(:meth:`TokenDataset.micro_batch`).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

DATA_FORMAT = "spade-distill-data/1"
META_FILE = "spade_data.json"


def write_token_dataset(rows: dict[str, list], out: str | Path, meta: dict, shard_rows: int = 2000) -> Path:
    """Write ``rows`` (``input_ids`` and ``loss_from`` columns at least) as a sharded dataset, atomically."""
    from datasets import Dataset, Features, Sequence, Value

    out = Path(out)
    if not rows.get("input_ids"):
        raise ValueError(f"no sequences to write to {out}: the selection left no usable (prompt, target) pair")
    if len(rows["input_ids"]) != len(rows.get("loss_from", [])):
        raise ValueError("every row needs input_ids and loss_from")
    features = {"input_ids": Sequence(Value("int32")), "loss_from": Value("int32")}
    features.update({k: Value("string") for k in rows if k not in features})
    ds = Dataset.from_dict(rows, features=Features(features))
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds.save_to_disk(str(tmp), num_shards=max(1, -(-len(ds) // shard_rows)))
        meta = {"format": DATA_FORMAT, "rows": len(ds), "tokens": int(sum(map(len, rows["input_ids"]))), **meta}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():  # an incomplete or stale folder of the same name: the new one replaces it
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def select_utterances(items: list[dict], fraction: float, seed: int, split: str = "train") -> list[int]:
    """A fixed random ``fraction`` of the ``split`` utterances (indices into ``items``), sorted."""
    check_fraction(fraction)
    pool = [i for i, it in enumerate(items) if it.get("split") == split]
    if not pool:
        raise ValueError(f"no {split!r} utterances to choose from")
    k = max(1, int(round(fraction * len(pool))))
    chosen = np.random.default_rng(seed).permutation(len(pool))[:k]
    return sorted(pool[i] for i in chosen)


def check_fraction(fraction: float) -> None:
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"data_fraction={fraction} must be in (0, 1]: the share of the teacher's training "
                         "utterances to distill on (SPADE uses under 0.05)")


def _files_digest(directory: Path) -> str:
    h = hashlib.sha256((directory / "index.json").read_bytes())
    h.update(str((directory / "tokens.safetensors").stat().st_size).encode())
    return h.hexdigest()[:12]


def build_reference_dataset(tokens_dir: str | Path, out_root: str | Path, fraction: float = 0.05, seed: int = 0,
                            pairs_per_target: int = 2, max_prompt_seconds: float = 4.0,
                            max_target_seconds: float = 7.5, shard_rows: int = 2000, split: str = "train") -> Path:
    """(prompt, target) sequences of the built-in model from a fixed subset of its training utterances.

    Targets and prompts both come from the subset (so the hours reported are all the audio the
    student ever sees); each target gets ``pairs_per_target`` prompts, other utterances of its
    speaker, as in the teacher's trainer. Returns the dataset folder, reusing it when it exists.
    ``split="heldout"`` builds the same kind of sequences from the teacher's held-out utterances,
    which neither model trained on: what the distillation's held-out loss is measured on.
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
    settings = {"source": "reference_tokens", "tokens_digest": _files_digest(tokens_dir), "fraction": fraction,
                "seed": seed, "pairs_per_target": pairs_per_target, "max_prompt_seconds": max_prompt_seconds,
                "max_target_seconds": max_target_seconds, "format": DATA_FORMAT}
    if split != "train":  # (train folders keep the names they had before splits existed)
        settings["split"] = split
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
                                                store.codes(t), store.frames(t).tolist())
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


def describe(meta: dict) -> str:
    """One line on how much data a dataset holds, and how much of the teacher's it is."""
    line = f"{meta['rows']:,} sequences, {meta['tokens']:,} tokens"
    if meta.get("utterances_total"):
        line += (f" from {meta['utterances_used']:,} of the teacher's {meta['utterances_total']:,} training "
                 f"utterances ({meta['percent_utterances']:.2f} %), {meta['hours_used']:.2f} h of "
                 f"{meta['hours_total']:.2f} h ({meta['percent_hours']:.2f} %)")
    return line


class TokenDataset:
    """A token dataset folder, read in a seeded order that is a pure function of the position.

    ``fraction`` < 1 keeps a fixed random subset of the rows (for datasets made elsewhere; the
    built-in one is already a subset of the teacher's utterances).
    """

    def __init__(self, path: str | Path, seed: int = 0, fraction: float = 1.0, complement: bool = False):
        from datasets import load_from_disk

        path = Path(path)
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a distillation dataset (no {META_FILE}); build one with "
                                    "spade_tts.distill.data (see docs/distillation.md)")
        check_fraction(fraction)
        self.path, self.seed = path, seed
        self.meta = json.loads((path / META_FILE).read_text())
        self.ds = load_from_disk(str(path)).select_columns(["input_ids", "loss_from"])
        self.rows = list(range(len(self.ds)))
        if fraction < 1:
            k = max(1, int(round(fraction * len(self.rows))))
            order = np.random.default_rng(seed).permutation(len(self.rows))
            self.rows = sorted((order[k:] if complement else order[:k]).tolist())
            self.meta = {**self.meta, "rows_used": len(self.rows), "percent_rows": round(100 * len(self.rows) / len(self.ds), 3)}
        elif complement:
            self.rows = []
        if not self.rows:
            raise ValueError(f"{path} holds no rows" + (" outside the data_fraction subset" if complement else ""))
        self.pad_id = int(self.meta.get("pad_id", 0))
        self._perm: tuple[int, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def row_at(self, position: int) -> int:
        """The row read at ``position`` of the endless stream: epoch e is a seeded permutation of the rows."""
        epoch, i = divmod(position, len(self.rows))
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.rows), generator=g).tolist())
        return self.rows[self._perm[1][i]]

    def first_batches(self, batch_size: int, limit: int):
        """The first ``limit`` rows in stored order, as collated batches: a fixed evaluation set."""
        from spade_tts.reference.dataset import collate

        rows = self.rows[:limit]
        for i in range(0, len(rows), batch_size):
            got = self.ds[rows[i:i + batch_size]]
            yield collate([(list(ids), int(lf)) for ids, lf in zip(got["input_ids"], got["loss_from"])], self.pad_id)

    def micro_batch(self, step: int, micro: int, rank: int, world: int, accum: int, batch_size: int) -> dict:
        """Process ``rank``'s ``micro``-th micro-batch of optimizer step ``step``.

        Step s reads stream positions [s * G, (s + 1) * G), G = batch_size * accum * world, cut
        into chunks of ``batch_size``; chunk ``micro * world + rank`` goes to (rank, micro). So the
        same global batch is read whether it is spread over processes or accumulation steps.
        """
        from spade_tts.reference.dataset import collate

        start = step * batch_size * accum * world + (micro * world + rank) * batch_size
        idx = [self.row_at(start + j) for j in range(batch_size)]
        got = self.ds[idx]
        return collate([(list(ids), int(lf)) for ids, lf in zip(got["input_ids"], got["loss_from"])], self.pad_id)
