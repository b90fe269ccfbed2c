"""`spade codec fit`: learn the tokenizer's codebook from the corpus's training audio."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from spade_tts.audio import load_audio
from spade_tts.codec.tokenizer import CodecConfig, SpeechTokenizer
from spade_tts.data.build import read_jsonl


@dataclass
class CodecFitConfig:
    corpus_dir: str = "data/corpus"
    out_dir: str = "data/codec"
    codebook_size: int = 4096
    stack: int = 1
    smooth: float = 0.33
    utterances: int = 3200  # training utterances sampled (evenly over voices) for the fit
    iters: int = 20
    seed: int = 0


def sample_rows(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows spread evenly over speakers so that no voice dominates the codebook."""
    by_speaker: dict[str, list[dict]] = {}
    for r in rows:
        by_speaker.setdefault(r["speaker"], []).append(r)
    rng = random.Random(seed)
    per = max(1, n // max(1, len(by_speaker)))
    out = []
    for spk in sorted(by_speaker):
        group = by_speaker[spk]
        out += rng.sample(group, min(per, len(group)))
    return out


def fit_codec(cfg: CodecFitConfig) -> SpeechTokenizer:
    corpus = Path(cfg.corpus_dir)
    manifest = corpus / "manifests" / "train.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found; run `spade data build out_dir={cfg.corpus_dir}` first")
    rows = sample_rows(read_jsonl(manifest), cfg.utterances, cfg.seed)
    audios = [load_audio(corpus / r["audio"]) for r in tqdm(rows, desc="loading audio", unit="utt")]
    start = time.time()
    torch.manual_seed(cfg.seed)
    codec_cfg = CodecConfig(codebook_size=cfg.codebook_size, stack=cfg.stack, smooth=cfg.smooth)
    tok = SpeechTokenizer.fit(codec_cfg, audios, iters=cfg.iters, seed=cfg.seed)
    tok.save(cfg.out_dir)
    print(f"codebook {cfg.codebook_size} x {cfg.stack} frame(s), {codec_cfg.tokens_per_second:g} tokens/s, "
          f"fitted on {len(audios)} utterances in {time.time() - start:.0f} s -> {cfg.out_dir}")
    return tok
