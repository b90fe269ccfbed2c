"""The speech tokenizer: audio -> one stream of discrete tokens -> audio.

A token is the nearest k-means centroid of ``stack`` consecutive log-mel frames, so the token
rate is ``sample_rate / hop / stack``. Decoding looks the centroids up, optionally smooths
them over time (centroid jumps between frames are what Griffin-Lim hears as buzz), and
inverts with Griffin-Lim. Codebook and settings live in one safetensors file plus a JSON.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from spade_tts.codec.mel import MelAnalyzer, MelSpec, MelTokenizer


@dataclass
class CodecConfig:
    kind: str = "kmeans"
    codebook_size: int = 4096
    stack: int = 1  # mel frames per token
    hop: int = 160
    n_fft: int = 512
    n_mels: int = 80
    griffin_lim_iters: int = 32
    smooth: float = 0.33  # weight of each neighbour in a [w, 1-2w, w] smoothing of decoded frames (docs/codec.md)

    @property
    def spec(self) -> MelSpec:
        return MelSpec(hop=self.hop, n_fft=self.n_fft, n_mels=self.n_mels)

    @property
    def tokens_per_second(self) -> float:
        return self.spec.frames_per_second / self.stack


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0, chunk: int = 65536) -> torch.Tensor:
    """Lloyd's k-means with k-means++-style seeding on a subsample; empty clusters re-seeded."""
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least {k} frames, got {n}: build a larger corpus or lower codebook_size")
    sub = x[torch.randperm(n, generator=g)[: min(n, 20 * k)]]
    # Plain k-means++ is O(k^2 n); seeding k/16 centres per step keeps its spread at a fraction of the cost.
    step = max(1, k // 16)
    c = sub[torch.multinomial(torch.ones(len(sub)), step, generator=g)]
    while c.shape[0] < k:
        d2 = torch.cdist(sub, c).min(dim=1).values ** 2
        c = torch.cat([c, sub[torch.multinomial(d2 + 1e-9, min(step, k - c.shape[0]), generator=g)]])
    for _ in range(iters):
        sums = torch.zeros_like(c)
        counts = torch.zeros(k)
        for i in range(0, n, chunk):
            xb = x[i : i + chunk]
            idx = torch.cdist(xb, c).argmin(dim=1)
            sums.index_add_(0, idx, xb)
            counts.index_add_(0, idx, torch.ones(len(idx)))
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            c[empty] = x[torch.randint(n, (int(empty.sum()),), generator=g)]
    return c


class SpeechTokenizer(MelTokenizer):
    def __init__(self, config: CodecConfig, codebook: torch.Tensor):
        self.config = config
        self.codebook = codebook.float()
        self.mel = MelAnalyzer(config.spec)

    @property
    def num_params(self) -> int:
        return int(self.codebook.numel())

    def features(self, audio: np.ndarray) -> torch.Tensor:
        """(tokens, stack * n_mels) stacked log-mel vectors; a trailing partial stack is dropped."""
        m = self.mel.log_mel(audio)
        s = self.config.stack
        t = len(m) // s
        return torch.from_numpy(m[: t * s].reshape(t, s * m.shape[1]))

    @classmethod
    def fit(cls, config: CodecConfig, audios: list[np.ndarray], iters: int = 25, seed: int = 0) -> "SpeechTokenizer":
        probe = cls(config, torch.zeros(config.codebook_size, config.stack * config.n_mels))
        feats = torch.cat([probe.features(a) for a in audios])
        return cls(config, kmeans(feats, config.codebook_size, iters=iters, seed=seed))

    def encode(self, audio: np.ndarray) -> np.ndarray:
        f = self.features(audio)
        if len(f) == 0:
            return np.zeros(0, dtype=np.int64)
        return torch.cdist(f, self.codebook).argmin(dim=1).numpy()

    def code_values(self) -> torch.Tensor:
        """The centroids (codes, stack * n_mels)."""
        return self.codebook

    def values_to_mel(self, values: torch.Tensor) -> np.ndarray:
        """Stacked frames unstacked, then smoothed across frames by ``smooth``."""
        m = values.float().numpy().reshape(-1, self.config.n_mels)
        w = self.config.smooth
        if w > 0 and len(m) > 2:
            padded = np.concatenate([m[:1], m, m[-1:]])
            m = w * padded[:-2] + (1 - 2 * w) * padded[1:-1] + w * padded[2:]
        return m

    def code_features(self) -> torch.Tensor:
        """The centroids (codes x stack * n_mels): codes of similar spectra start with similar embeddings."""
        return self.codebook

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({"codebook": self.codebook.contiguous()}, str(d / "codec.safetensors"))
        (d / "codec.json").write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "SpeechTokenizer":
        d = Path(directory)
        if not (d / "codec.json").is_file() or not (d / "codec.safetensors").is_file():
            raise FileNotFoundError(f"no speech tokenizer in {d} (codec.json + codec.safetensors); run `spade codec fit`")
        cfg = CodecConfig(**json.loads((d / "codec.json").read_text()))
        return cls(cfg, load_file(str(d / "codec.safetensors"))["codebook"])
