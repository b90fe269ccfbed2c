"""`spade codec fit`: learn the speech tokenizer from the corpus's training audio.

``kind=kmeans`` fits the 100-token/s log-mel codebook in one pass; ``kind=fsq`` trains the learned
50-token/s quantizer for ``minutes`` of CPU time, resumably (``fsq_train.py``).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from spade_tts.audio import load_audio
from spade_tts.codec.tokenizer import CodecConfig, SpeechTokenizer
from spade_tts.codec.fsq import FSQConfig
from spade_tts.data.build import read_jsonl


@dataclass
class CodecFitConfig:
    corpus_dir: str = "data/corpus"
    out_dir: str = "data/codec"
    kind: str = "kmeans"  # kmeans (centroids of log-mel frames) or fsq (learned autoencoder, finite scalar quantization)
    codebook_size: int = 4096  # kmeans: centroids
    stack: int = 1
    smooth: float = 0.33
    utterances: int = 3200  # training utterances sampled (evenly over voices) for the fit
    iters: int = 20  # kmeans: Lloyd iterations
    levels: list[int] = field(default_factory=lambda: FSQConfig().levels)  # fsq: levels per channel
    stride: int = 2  # fsq: mel frames per token (2 = 50 tokens/s)
    minutes: float = 30.0  # fsq: training time, summed over resumed runs (unless steps is set)
    steps: int = 0  # fsq: optimizer steps, summed over resumed runs; > 0 replaces the minutes budget
    batch_size: int = 16  # fsq: 2-second crops per step
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


def fit_codec(cfg: CodecFitConfig):
    if cfg.kind not in ("kmeans", "fsq"):
        raise ValueError(f"kind={cfg.kind!r} is not a tokenizer kind: use kind=kmeans or kind=fsq")
    corpus = Path(cfg.corpus_dir)
    manifest = corpus / "manifests" / "train.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found; run `spade data build out_dir={cfg.corpus_dir}` first")
    rows = sample_rows(read_jsonl(manifest), cfg.utterances, cfg.seed)
    audios = [load_audio(corpus / r["audio"]) for r in tqdm(rows, desc="loading audio", unit="utt")]
    start = time.time()
    if cfg.kind == "fsq":
        from spade_tts.codec.fsq_train import train_fsq
        from spade_tts.codec.mel import MelAnalyzer

        fsq = FSQConfig(levels=list(cfg.levels), stride=cfg.stride)
        analyzer = MelAnalyzer(fsq.spec)
        mels = [analyzer.log_mel(a) for a in tqdm(audios, desc="log-mel", unit="utt")]
        tok = train_fsq(fsq, mels, cfg.out_dir, cfg.minutes, batch_size=cfg.batch_size, seed=cfg.seed,
                        steps=cfg.steps)
        print(f"FSQ {'x'.join(map(str, fsq.levels))} = {fsq.codebook_size} codes, {fsq.tokens_per_second:g} tokens/s, "
              f"{tok.num_params / 1e6:.1f}M parameters -> {cfg.out_dir}")
        return tok
    torch.manual_seed(cfg.seed)
    codec_cfg = CodecConfig(codebook_size=cfg.codebook_size, stack=cfg.stack, smooth=cfg.smooth)
    tok = SpeechTokenizer.fit(codec_cfg, audios, iters=cfg.iters, seed=cfg.seed)
    tok.save(cfg.out_dir)
    print(f"codebook {cfg.codebook_size} x {cfg.stack} frame(s), {codec_cfg.tokens_per_second:g} tokens/s, "
          f"fitted on {len(audios)} utterances in {time.time() - start:.0f} s -> {cfg.out_dir}")
    return tok
