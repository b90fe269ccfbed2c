"""The distillation data: token sequences stored as sharded Arrow, and the order they are read in.

Distillation needs only token sequences (the teacher's outputs are computed on the fly), so a
dataset is a ``datasets`` folder (``save_to_disk``: Arrow shards, memory-mapped when loaded,
so an 8B run over millions of rows reads them the same way as the built-in model's thousands)
with two columns the trainer uses:

* ``input_ids``: one full training sequence of the model (prompt + target), int32;
* ``loss_from``: the position of the last prompt token; labels start after it (the speech part).

and ``spade_data.json`` beside the shards: the pad id, where the rows came from and how much of
the teacher's training data they use. Any family makes one from a manifest (``spade data
family``); a family that ships its own training data makes its default one itself
(``SpeechLM.distill_data``: the built-in model's comes from its tokenized corpus).

The read order is a pure function of (seed, position), so a resumed run reads exactly the
batches it would have read, and any number of processes splits each global batch the same way
(:meth:`TokenDataset.micro_batch`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from spade_tts.batching import collate

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


def check_fraction(fraction: float) -> None:
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"data_fraction={fraction} must be in (0, 1]: the share of the teacher's training "
                         "utterances to distill on (SPADE uses under 0.05)")


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
        start = step * batch_size * accum * world + (micro * world + rank) * batch_size
        idx = [self.row_at(start + j) for j in range(batch_size)]
        got = self.ds[idx]
        return collate([(list(ids), int(lf)) for ids, lf in zip(got["input_ids"], got["loss_from"])], self.pad_id)
