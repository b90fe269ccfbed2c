"""Token files for the reference LM, and (prompt, target) training pairs drawn from them.

Corpus audio is tokenized once (``prepare_tokens``) into one safetensors file of flat arrays
plus a JSON index, so that training needs only numpy and torch: the GPU machine that trains
has neither librosa nor the voices. Pairs are drawn fresh every epoch, the prompt a different
utterance of the target's speaker, which is exactly the zero-shot situation at synthesis.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from spade_tts.batching import collate
from spade_tts.io import atomic_path
from spade_tts.reference.vocab import Vocab, frames_per_phone


def prepare_tokens(corpus_dir: str | Path, codec_dir: str | Path, out_dir: str | Path) -> dict:
    """Tokenize every phone-aligned utterance of the corpus (train and held-out)."""
    from tqdm import tqdm

    from spade_tts.audio import load_audio
    from spade_tts.codec import load_tokenizer
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
    code_dtype = np.int16 if codec.vocab_size <= np.iinfo(np.int16).max else np.int32
    codes, phones, frames, index = [], [], [], []
    for r in tqdm(rows, desc="tokenizing corpus", unit="utt"):
        c = codec.encode(load_audio(corpus / r["audio"]))
        ph = vocab.phone_ids([p for p, _ in r["phones"]])
        fr = frames_per_phone([e for _, e in r["phones"]], codec.config.tokens_per_second, len(c))
        codes.append(c.astype(code_dtype))
        phones.append(np.asarray(ph, dtype=np.int16))
        frames.append(np.asarray(fr, dtype=np.int16))
        index.append({k: r[k] for k in ("id", "speaker", "split", "text", "seconds")})
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, parts in (("codes", codes), ("phones", phones), ("frames", frames)):
        arrays[name] = np.concatenate(parts)
        arrays[f"{name}_offsets"] = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
    with atomic_path(out / "tokens.safetensors") as tmp:
        save_file(arrays, str(tmp))
    meta = {"num_speech": codec.vocab_size, "tokens_per_second": codec.config.tokens_per_second, "items": index}
    (out / "index.json").write_text(json.dumps(meta))
    return {"utterances": len(index), "speech_tokens": int(len(arrays["codes"]))}


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
