"""Training the FSQ tokenizer (``spade codec fit kind=fsq``), on a CPU time budget, resumable.

Random 2-second crops of normalised log-mel, L1 reconstruction, AdamW with a cosine over the
budget and gradient clipping (the first pilot without it diverged onto one code). Everything needed
to continue (weights, optimizer, elapsed training seconds, the mel statistics) is checkpointed
atomically every ``save_minutes``; a rerun continues, and a finished run only re-exports.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from spade_tts.codec.fsq import FSQConfig, FSQTokenizer, MelFSQ
from spade_tts.io import atomic_path

CROP_FRAMES = 200  # 2 s of mel: long enough for the convolutions' context, short enough for big batches
MIN_LR_FRACTION = 0.05


def _save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def mel_statistics(mels: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    frames = np.concatenate(mels)
    return torch.from_numpy(frames.mean(0)), torch.from_numpy(frames.std(0) + 1e-5)


def train_fsq(config: FSQConfig, mels: list[np.ndarray], out_dir: str | Path, minutes: float, batch_size: int = 16,
              lr: float = 1e-3, save_minutes: float = 2.0, seed: int = 0, steps: int = 0) -> FSQTokenizer:
    """Train for ``steps`` optimizer steps, or (``steps`` 0) for ``minutes`` of wall time in this process, both
    summed over resumed runs; save to ``out_dir``. A step budget makes the result independent of how busy the
    machine is (the last time-budgeted run made 40 % fewer steps while sharing the cores with a test run)."""
    out = Path(out_dir)
    ckpt = out / "fsq_train.pt"
    pool = [m for m in mels if len(m) >= CROP_FRAMES]
    if not pool:
        raise ValueError(f"no training utterance is {CROP_FRAMES / 100:g} s or longer: build a corpus with longer clips")
    torch.manual_seed(seed)
    net = MelFSQ(config)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    state = {"seconds": 0.0, "steps": 0, "log": []}
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved["config"] != config.__dict__:
            raise ValueError(f"{ckpt} was trained with {saved['config']}, not {config.__dict__}: "
                             f"delete it or pick another out_dir")
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        state, mean, std = saved["state"], saved["mel_mean"], saved["mel_std"]
        of = f"{steps} steps" if steps > 0 else f"{minutes:g} min"
        print(f"resumed {ckpt} at step {state['steps']} ({state['seconds'] / 60:.1f} min trained) of {of}")
    else:
        mean, std = mel_statistics(pool)

    def checkpoint() -> None:
        _save({"net": net.state_dict(), "opt": opt.state_dict(), "state": state, "config": config.__dict__,
               "mel_mean": mean, "mel_std": std}, ckpt)

    budget = minutes * 60

    def progress() -> float:
        return state["steps"] / steps if steps > 0 else state["seconds"] / budget

    rng = np.random.default_rng([seed, state["steps"]])
    if steps > 0:
        bar = tqdm(total=steps, initial=state["steps"], unit="step", desc="fsq tokenizer")
    else:
        bar = tqdm(total=round(minutes, 1), initial=round(state["seconds"] / 60, 1), unit="min", desc="fsq tokenizer")
    last_save = time.time()
    net.train()
    while progress() < 1.0:
        t0 = time.time()
        picks = [pool[i] for i in rng.integers(0, len(pool), batch_size)]
        crops = [m[s : s + CROP_FRAMES] for m in picks for s in [int(rng.integers(0, len(m) - CROP_FRAMES + 1))]]
        x = ((torch.from_numpy(np.stack(crops)) - mean) / std).transpose(1, 2).float()
        for g in opt.param_groups:
            g["lr"] = lr * max(MIN_LR_FRACTION, 0.5 * (1 + math.cos(math.pi * progress())))
        y, codes = net(x)
        loss = (y - x).abs().mean()
        if not torch.isfinite(loss):
            raise RuntimeError(f"FSQ loss became {loss.item()} at step {state['steps']}; lower lr= and rerun "
                               f"(it resumes from {ckpt})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        state["steps"] += 1
        state["seconds"] += time.time() - t0
        bar.n = state["steps"] if steps > 0 else round(state["seconds"] / 60, 1)
        if state["steps"] % 50 == 0:
            used = int(codes.unique().numel())
            state["log"].append({"step": state["steps"], "seconds": round(state["seconds"], 1),
                                 "l1": round(loss.item(), 4), "codes_in_batch": used})
            bar.set_postfix(l1=f"{loss.item():.3f}", codes=used)
        if time.time() - last_save > save_minutes * 60:
            checkpoint()
            last_save = time.time()
    bar.close()
    checkpoint()
    tok = FSQTokenizer(config, net.eval(), mean, std)
    tok.save(out)
    return tok
