"""A learned speech tokenizer: log-mel -> finite scalar quantization at 50 tokens/s -> log-mel.

The k-means codec (``tokenizer.py``) needs 100 tokens a second to read; the LLM-TTS families use far
fewer (X-codec2: one FSQ codebook at 50/s), and every token less shrinks LM training, decoding, the
KV cache and WLI alike. Here a small convolutional autoencoder squeezes the 100 mel frames of a
second into ``100 / stride`` vectors of ``len(levels)`` channels, each bounded and rounded to one
of its levels (FSQ, Mentzer et al. 2023: no codebook to learn, so nothing to collapse onto a few
entries but the bound itself); a code is the mixed-radix number of those digits. The decoder maps
the digits back to log-mel and Griffin-Lim makes audio, as for the k-means codec. Measured choice
of levels and rate: docs/reference-model.md ("Issue 17").

Files: ``codec.json`` (the config, ``kind: fsq``) and ``codec.safetensors`` (weights plus the mel
normalisation), the same two names the k-means codec uses, so a model folder holds either.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spade_tts.codec.mel import MelAnalyzer, MelSpec, MelTokenizer
from spade_tts.io import atomic_path, write_json


@dataclass
class FSQConfig:
    kind: str = "fsq"
    levels: list[int] = field(default_factory=lambda: [8, 8, 8, 6, 5])  # 15,360 codes (the FSQ paper's 2^14 set)
    stride: int = 2  # mel frames (100 a second) per token: 2 = 50 tokens/s
    channels: int = 256
    blocks: int = 4  # residual blocks on each side, half before the stride, half after
    hop: int = 160
    n_fft: int = 512
    n_mels: int = 80
    griffin_lim_iters: int = 32

    @property
    def spec(self) -> MelSpec:
        return MelSpec(hop=self.hop, n_fft=self.n_fft, n_mels=self.n_mels)

    @property
    def tokens_per_second(self) -> float:
        return self.spec.frames_per_second / self.stride

    @property
    def codebook_size(self) -> int:
        return int(np.prod(self.levels))


class FSQ(nn.Module):
    """Each channel bounded by a tanh and rounded to one of its levels (straight-through gradient)."""

    def __init__(self, levels: list[int]):
        super().__init__()
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32), persistent=False)
        self.register_buffer("radix", torch.tensor(np.cumprod([1] + levels[:-1]), dtype=torch.long), persistent=False)

    def _half(self) -> torch.Tensor:
        return ((self.levels - 1) / 2)[None, :, None]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, D, T) -> (quantized values in [-1, 1], codes (B, T))."""
        half = self._half()
        shift = (self.levels % 2 == 0).float()[None, :, None] * 0.5  # even level counts sit between integers
        bounded = torch.tanh(z) * (half + shift - 1e-3) - shift
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        digits = (torch.round(bounded).detach() + shift + half).long()
        return (rounded + shift) / half, (digits * self.radix[None, :, None]).sum(1)

    def values(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, T) -> the quantized values (B, D, T) the decoder was trained on."""
        digits = (codes[:, None, :] // self.radix[None, :, None]) % self.levels.long()[None, :, None]
        half = self._half()
        return (digits.float() - half) / half


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, ch)
        self.net = nn.Sequential(nn.Conv1d(ch, ch, 5, padding=2), nn.GELU(), nn.Conv1d(ch, ch, 5, padding=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(self.norm(x))


class MelFSQ(nn.Module):
    """Normalised log-mel (B, n_mels, T) -> codes (B, T / stride) -> normalised log-mel (B, n_mels, T)."""

    def __init__(self, cfg: FSQConfig):
        super().__init__()
        ch, half, d = cfg.channels, cfg.blocks // 2, len(cfg.levels)
        self.encoder = nn.Sequential(
            nn.Conv1d(cfg.n_mels, ch, 5, padding=2), *[ResBlock(ch) for _ in range(half)],
            nn.Conv1d(ch, ch, cfg.stride, stride=cfg.stride), *[ResBlock(ch) for _ in range(half)],
            # without a norm before the projection the residual stream grows, the tanh saturates and the
            # codes collapse onto the corners (issue 17's first pilots: ~110 codes of 4,096 used)
            nn.GroupNorm(1, ch), nn.Conv1d(ch, d, 1))
        self.fsq = FSQ(cfg.levels)
        self.decoder = nn.Sequential(
            nn.Conv1d(d, ch, 1), *[ResBlock(ch) for _ in range(half)],
            nn.ConvTranspose1d(ch, ch, cfg.stride, stride=cfg.stride), *[ResBlock(ch) for _ in range(half)],
            nn.GroupNorm(1, ch), nn.Conv1d(ch, cfg.n_mels, 5, padding=2))

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, codes = self.fsq(self.encoder(mel))
        return self.decoder(values), codes


class FSQTokenizer(MelTokenizer):
    """Audio <-> codes with the same surface as the k-means ``SpeechTokenizer``."""

    def __init__(self, config: FSQConfig, net: MelFSQ, mel_mean: torch.Tensor, mel_std: torch.Tensor):
        self.config, self.net = config, net.eval()
        self.mel_mean, self.mel_std = mel_mean.float(), mel_std.float()
        self.mel = MelAnalyzer(config.spec)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def normalise(self, log_mel: np.ndarray) -> torch.Tensor:
        """(frames, n_mels) log-mel -> (1, n_mels, frames) normalised, cut to a whole number of tokens."""
        t = len(log_mel) // self.config.stride * self.config.stride
        return ((torch.from_numpy(log_mel[:t]) - self.mel_mean) / self.mel_std).T[None].float()

    @torch.no_grad()
    def encode(self, audio: np.ndarray) -> np.ndarray:
        x = self.normalise(self.mel.log_mel(audio))
        if x.shape[-1] == 0:
            return np.zeros(0, dtype=np.int64)
        return self.net.fsq(self.net.encoder(x))[1][0].numpy()

    def code_values(self) -> torch.Tensor:
        """(codes, levels) the quantized digits in [-1, 1] of every code."""
        return self.net.fsq.values(torch.arange(self.vocab_size)[None])[0].T

    @torch.no_grad()
    def values_to_mel(self, values: torch.Tensor) -> np.ndarray:
        y = self.net.decoder(values.float().T[None])[0].T
        return (y * self.mel_std + self.mel_mean).numpy()

    def code_features(self) -> torch.Tensor:
        """One-hot digits, one block per FSQ channel (codes x sum(levels)): an embedding linear in them scores a
        code by the sum of its digits' scores, i.e. a tied head starts as a product of per-channel softmaxes."""
        codes = torch.arange(self.vocab_size)
        digits = (codes[:, None] // self.net.fsq.radix[None]) % self.net.fsq.levels.long()[None]
        return torch.cat([torch.nn.functional.one_hot(digits[:, i], int(n)).float()
                          for i, n in enumerate(self.config.levels)], dim=1)

    def save(self, directory: str | Path) -> None:
        """Weights in half precision, as the LM's that ship beside them (on 8 held-out utterances the codes stay
        the same and the decoded mel moves by ~1e-4 of its range); the mel statistics in full."""
        d = Path(directory)
        tensors = {f"net.{k}": v.half().contiguous() for k, v in self.net.state_dict().items()}
        tensors.update({"mel_mean": self.mel_mean.contiguous(), "mel_std": self.mel_std.contiguous()})
        with atomic_path(d / "codec.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json(d / "codec.json", asdict(self.config))

    @classmethod
    def from_files(cls, config: dict, tensors_path: Path) -> "FSQTokenizer":
        cfg = FSQConfig(**config)
        tensors = load_file(str(tensors_path))
        net = MelFSQ(cfg)
        net.load_state_dict({k[len("net."):]: v.float() for k, v in tensors.items() if k.startswith("net.")})
        return cls(cfg, net, tensors["mel_mean"], tensors["mel_std"])

