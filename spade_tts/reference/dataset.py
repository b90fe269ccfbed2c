"""Token files for the reference LM, and (prompt, target) training pairs drawn from them.

Corpus audio is tokenized once (``prepare_tokens``) into one safetensors file of flat arrays
plus a JSON index, so that training needs only numpy and torch: the GPU machine that trains
has neither librosa nor the voices. Pairs are drawn fresh every epoch, the prompt a different
utterance of the target's speaker, which is exactly the zero-shot situation at synthesis.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from spade_tts.batching import collate
from spade_tts.io import atomic_path, digest, write_json
from spade_tts.reference.vocab import Vocab, frames_per_phone


TOKEN_PART = 500  # utterances per part file: a killed tokenization redoes at most this many


def prepare_tokens(corpus_dir: str | Path, codec_dir: str | Path, out_dir: str | Path, part_size: int = TOKEN_PART) -> dict:
    """Tokenize every phone-aligned utterance of the corpus (train and held-out), resumably.

    Tokenizing the 3,000-per-voice corpus took 35 minutes on two cores, so the work is done in parts of
    ``part_size`` utterances, each written atomically to ``out_dir/parts``; a killed run keeps its finished
    parts, and parts made from another corpus or codec are discarded. The merged ``tokens.safetensors`` is
    written last, so its presence means the whole corpus is done. The encoder runs on one thread: its small
    convolutions take 27 ms an utterance against ~60 on both of this project's two cores (1,407 held-out
    utterances: 37 s against 85), and two one-thread processes were slower still (50 s: the two cores share
    their compute)."""
    from tqdm import tqdm

    from spade_tts.audio import load_audio
    from spade_tts.codec import CODEC_FILES, load_tokenizer
    from spade_tts.data.build import read_jsonl

    corpus, out = Path(corpus_dir), Path(out_dir)
    codec = load_tokenizer(codec_dir)
    vocab = Vocab(codec.vocab_size)
    rows = []
    for split in ("train", "heldout"):
        manifest = corpus / "manifests" / f"{split}.jsonl"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest} not found; run `spade data build` first")
        rows += [r for r in read_jsonl(manifest) if r.get("phones")]
    if not rows:
        raise ValueError(f"{corpus} has no phone-aligned utterances to tokenize; build it with an aligned voice")
    plan = {"codec": digest(*(Path(codec_dir) / f for f in CODEC_FILES)),
            "utterances": digest(*(f"{r['id']}|{r['audio']}" for r in rows)), "part_size": part_size}
    parts = out / "parts"
    if (parts / "plan.json").is_file() and json.loads((parts / "plan.json").read_text()) != plan:
        shutil.rmtree(parts)  # made from another corpus or codec
    write_json(parts / "plan.json", plan)
    code_dtype = np.int16 if codec.vocab_size <= np.iinfo(np.int16).max else np.int32
    starts = range(0, len(rows), part_size)

    def part_file(k: int) -> Path:
        return parts / f"{k // part_size:05d}.safetensors"

    todo = [k for k in starts if not part_file(k).is_file()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tqdm(total=len(rows), initial=len(rows) - sum(len(rows[k : k + part_size]) for k in todo),
                  desc="tokenizing corpus", unit="utt") as bar:
            for k in todo:
                codes, phones, frames = [], [], []
                for r in rows[k : k + part_size]:
                    c = codec.encode(load_audio(corpus / r["audio"]))
                    codes.append(c.astype(code_dtype))
                    phones.append(np.asarray(vocab.phone_ids([p for p, _ in r["phones"]]), dtype=np.int16))
                    frames.append(np.asarray(frames_per_phone([e for _, e in r["phones"]],
                                                              codec.config.tokens_per_second, len(c)), dtype=np.int16))
                    bar.update()
                with atomic_path(part_file(k)) as tmp:
                    save_file(_flat({"codes": codes, "phones": phones, "frames": frames}), str(tmp))
    finally:
        torch.set_num_threads(threads)
    merged: dict[str, list[np.ndarray]] = {"codes": [], "phones": [], "frames": []}
    for k in starts:
        part = load_file(str(part_file(k)))
        for name, pieces in merged.items():
            off = part[f"{name}_offsets"]
            pieces += [part[name][off[i] : off[i + 1]] for i in range(len(off) - 1)]
    index = [{k: r[k] for k in ("id", "speaker", "split", "text", "seconds")} for r in rows]
    write_json(out / "index.json", {"num_speech": codec.vocab_size, "tokens_per_second": codec.config.tokens_per_second,
                                    "items": index})
    arrays = _flat(merged)
    with atomic_path(out / "tokens.safetensors") as tmp:
        save_file(arrays, str(tmp))
    shutil.rmtree(parts)
    return {"utterances": len(index), "speech_tokens": int(len(arrays["codes"]))}


def _flat(pieces: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-utterance arrays as one flat array per name plus ``NAME_offsets`` (the token file's layout)."""
    arrays = {}
    for name, parts in pieces.items():
        arrays[name] = np.concatenate(parts)
        arrays[f"{name}_offsets"] = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
    return arrays


def token_index(directory: str | Path) -> dict:
    """A tokenized corpus's index.json (``items``, ``num_speech``, ``tokens_per_second``), without loading its tokens."""
    d = Path(directory)
    if not (d / "tokens.safetensors").is_file():
        raise FileNotFoundError(f"no tokens in {d}; run `spade train-reference` once on a machine with the corpus")
    return json.loads((d / "index.json").read_text())


class TokenStore:
    """Random access to the tokenized utterances."""

    def __init__(self, directory: str | Path):
        meta = token_index(directory)
        self.arrays = load_file(str(Path(directory) / "tokens.safetensors"))
        self.items: list[dict] = meta["items"]
        self.num_speech = int(meta["num_speech"])
        self.tokens_per_second = float(meta["tokens_per_second"])

    def _get(self, name: str, i: int) -> np.ndarray:
        off = self.arrays[f"{name}_offsets"]
        return self.arrays[name][off[i] : off[i + 1]].astype(np.int64)

    def codes(self, i: int) -> np.ndarray:
        return self._get("codes", i)

    def phones(self, i: int) -> np.ndarray:
        return self._get("phones", i)

    def frames(self, i: int) -> np.ndarray:
        return self._get("frames", i)


class PairSampler:
    """Endless (prompt, target) pairs of one speaker, reproducible from (seed, step)."""

    def __init__(self, store: TokenStore, split: str, max_prompt_seconds: float, max_target_seconds: float, seed: int,
                 prompt_loss: bool = False):
        self.store, self.vocab, self.seed, self.prompt_loss = store, Vocab(store.num_speech), seed, prompt_loss
        by_spk: dict[str, list[int]] = {}
        self.targets = []
        for i, it in enumerate(store.items):
            if it["split"] != split:
                continue
            if it["seconds"] <= max_target_seconds:
                self.targets.append(i)
            if it["seconds"] <= max_prompt_seconds:
                by_spk.setdefault(it["speaker"], []).append(i)
        self.prompts = by_spk
        self.targets = [t for t in self.targets if len(by_spk.get(store.items[t]["speaker"], [])) > 1]
        if not self.targets:
            raise ValueError(f"no usable {split} items: need two or more utterances per speaker under the length limits")

    def example(self, step_rng: random.Random) -> tuple[list[int], int]:
        s = self.store
        t = step_rng.choice(self.targets)
        pool = self.prompts[s.items[t]["speaker"]]
        p = t
        while p == t:
            p = step_rng.choice(pool)
        return self.vocab.training_ids(
            s.phones(p).tolist(), s.phones(t).tolist(), s.codes(p), s.codes(t), s.frames(t).tolist(),
            self.prompt_loss)

    def batch(self, step: int, batch_size: int) -> dict[str, torch.Tensor]:
        rng = random.Random(self.seed * 1_000_003 + step)
        examples = [self.example(rng) for _ in range(batch_size)]
        return collate(examples, self.vocab.pad)
