"""Issue 17's tokenizer pilots: a learned FSQ quantizer on log-mel at 50 or 25 tokens/s against today's k-means.

Each pilot trains a small convolutional autoencoder on log-mel frames (100 a second in, ``stride``
times fewer tokens out, finite scalar quantization in between, L1 loss) for a fixed CPU time, then
scores the round trip on the held-out items of the corpus the way the models are scored: the
decoded mel through Griffin-Lim, Whisper tiny.en WER against the text. The same items as recorded,
and the true mel through Griffin-Lim, give the ceilings; today's tokenizer (the shipped k-means
codec, 100 tokens/s, 4,096 codes) runs beside them. Prints a table and writes JSON.

Resumable: each pilot checkpoints its weights, optimizer and elapsed training time atomically every
``--save-minutes``; rerunning the same command continues it and a finished one only re-scores.

    python3 benchmarks/tokenizer_pilot.py --corpus data/pilot_corpus --minutes 10 \\
        --pilots fsq50_65k:2:4,4,4,4,4,4,4,4 fsq50_4k:2:8,8,8,8 fsq25_65k:4:4,4,4,4,4,4,4,4
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class FSQ(nn.Module):
    """Finite scalar quantization: each of ``len(levels)`` channels is bounded and rounded to one of its
    levels (straight-through gradient), so the code is a mixed-radix number below prod(levels)."""

    def __init__(self, levels: list[int]):
        super().__init__()
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32))
        self.register_buffer("radix", torch.tensor(np.cumprod([1] + levels[:-1]), dtype=torch.long))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # z: (B, D, T)
        half = ((self.levels - 1) / 2)[None, :, None]
        shift = (self.levels % 2 == 0).float()[None, :, None] * 0.5  # even levels sit between the integers
        bounded = torch.tanh(z) * (half - 1e-3 + shift) - shift
        q = bounded + (torch.round(bounded) - bounded).detach()
        digits = (torch.round(bounded) + shift + half).long()  # 0 .. level-1
        return (q + shift) / half, (digits * self.radix[None, :, None]).sum(1)


class Block(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(ch, ch, 5, padding=2), nn.GELU(), nn.Conv1d(ch, ch, 5, padding=2))
        self.norm = nn.GroupNorm(1, ch)

    def forward(self, x):
        return x + self.net(self.norm(x))


class MelFSQ(nn.Module):
    """log-mel (B, 80, T) -> codes (B, T / stride) -> log-mel (B, 80, T)."""

    def __init__(self, levels: list[int], stride: int, ch: int = 256, blocks: int = 4, n_mels: int = 80):
        super().__init__()
        self.stride = stride
        self.enc = nn.Sequential(nn.Conv1d(n_mels, ch, 5, padding=2), *[Block(ch) for _ in range(blocks // 2)],
                                 nn.Conv1d(ch, ch, stride, stride=stride), *[Block(ch) for _ in range(blocks // 2)],
                                 nn.Conv1d(ch, len(levels), 1))
        self.fsq = FSQ(levels)
        self.dec = nn.Sequential(nn.Conv1d(len(levels), ch, 1), *[Block(ch) for _ in range(blocks // 2)],
                                 nn.ConvTranspose1d(ch, ch, stride, stride=stride),
                                 *[Block(ch) for _ in range(blocks // 2)], nn.Conv1d(ch, n_mels, 5, padding=2))

    def forward(self, mel):
        q, codes = self.fsq(self.enc(mel))
        return self.dec(q), codes


def load_mels(rows: list[dict], corpus: Path, analyzer) -> list[np.ndarray]:
    from spade_tts.audio import load_audio

    return [analyzer.log_mel(load_audio(corpus / r["audio"])) for r in rows]


def save_atomic(obj, path: Path) -> None:
    from spade_tts.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train(name: str, stride: int, levels: list[int], mels: list[np.ndarray], out: Path, minutes: float,
          save_minutes: float, mean: np.ndarray, std: np.ndarray) -> tuple[MelFSQ, dict]:
    torch.manual_seed(0)
    model = MelFSQ(levels, stride)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    state = {"seconds": 0.0, "steps": 0, "losses": []}
    ckpt = out / "pilot.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
    rng = np.random.default_rng(state["steps"])
    crop, batch = 200, 16
    pool = [m for m in mels if len(m) >= crop]
    last_save = time.time()
    while state["seconds"] < minutes * 60:
        t0 = time.time()
        x = np.stack([(m[s:s + crop] - mean) / std for m in (pool[i] for i in rng.integers(0, len(pool), batch))
                      for s in [int(rng.integers(0, len(m) - crop + 1))]])
        x = torch.from_numpy(x).float().transpose(1, 2)
        lr = 1e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, state["seconds"] / (minutes * 60))))
        for g in opt.param_groups:
            g["lr"] = max(lr, 5e-5)
        y, _ = model(x)
        loss = (y - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # without it the first pilot collapsed to one code
        opt.step()
        state["steps"] += 1
        state["seconds"] += time.time() - t0
        if state["steps"] % 50 == 0:
            state["losses"].append([state["steps"], round(state["seconds"], 1), loss.item()])
            print(f"{name}: step {state['steps']} {state['seconds'] / 60:.1f} min L1 {loss.item():.4f}", flush=True)
        if time.time() - last_save > save_minutes * 60:
            save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, ckpt)
            last_save = time.time()
    save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, ckpt)
    return model.eval(), state


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / "data" / "pilot_corpus"))
    ap.add_argument("--pilots", nargs="+", default=["fsq50_65k:2:4,4,4,4,4,4,4,4"],
                    help="NAME:STRIDE:LEVELS (stride 2 = 50 tokens/s, 4 = 25 tokens/s; FSQ levels per channel)")
    ap.add_argument("--minutes", type=float, default=10.0, help="training CPU time per pilot")
    ap.add_argument("--save-minutes", type=float, default=2.0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "tokenizer_pilot"))
    ap.add_argument("--kmeans-codec", default=str(ROOT / "data" / "codec"),
                    help="attempt 1's k-means tokenizer, the 'today' row (`spade codec fit --recipe recipes/codec.yaml`); "
                         "the row is left out when the folder has none")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "tokenizer_pilot_cpu.json"))
    args = ap.parse_args(argv)

    from spade_tts.codec.mel import MelAnalyzer, MelSpec
    from spade_tts.codec.tokenizer import SpeechTokenizer
    from spade_tts.data.build import read_jsonl
    from spade_tts.scoring import get_transcriber, mean_wer
    from spade_tts.audio import load_audio

    corpus, out = Path(args.corpus), Path(args.out)
    analyzer = MelAnalyzer(MelSpec())
    train_rows = read_jsonl(corpus / "manifests" / "train.jsonl")
    held = read_jsonl(corpus / "manifests" / "heldout.jsonl")
    print(f"{len(train_rows)} training utterances ({sum(r['seconds'] for r in train_rows) / 3600:.2f} h), "
          f"{len(held)} held-out", flush=True)
    mels = load_mels(train_rows, corpus, analyzer)
    frames = np.concatenate(mels)
    mean, std = frames.mean(0), frames.std(0) + 1e-5
    held_mels = load_mels(held, corpus, analyzer)
    asr = get_transcriber()
    texts = [r["text"] for r in held]

    def wer_of(audios):
        hyps = asr.transcribe(audios)
        return mean_wer(texts, hyps)

    rows = {"original": {"tokens_per_second": None, "wer": wer_of([load_audio(corpus / r["audio"]) for r in held])},
            "true mel + Griffin-Lim": {"tokens_per_second": 100, "wer": wer_of([analyzer.invert(m) for m in held_mels])}}
    if (Path(args.kmeans_codec) / "codec.json").is_file():
        kmeans = SpeechTokenizer.load(args.kmeans_codec)
        rows["today: k-means 4,096 (attempt 1's)"] = {
            "tokens_per_second": 100, "codes": 4096,
            "wer": wer_of([kmeans.decode(kmeans.encode(load_audio(corpus / r["audio"])).tolist()) for r in held])}
    else:
        print(f"no k-means tokenizer in {args.kmeans_codec}: its row is left out "
              "(make it with `spade codec fit --recipe recipes/codec.yaml`)")
    for spec in args.pilots:
        name, stride, levels = spec.split(":")
        levels = [int(x) for x in levels.split(",")]
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        model, state = train(name, int(stride), levels, mels, folder, args.minutes, args.save_minutes, mean, std)
        audios, used = [], set()
        with torch.no_grad():
            for m in held_mels:
                t = len(m) // int(stride) * int(stride)
                x = torch.from_numpy((m[:t] - mean) / std).float().T[None]
                y, codes = model(x)
                used.update(codes.flatten().tolist())
                audios.append(analyzer.invert(y[0].T.numpy() * std + mean))
        rows[name] = {"tokens_per_second": 100 / int(stride), "codes": int(np.prod(levels)), "levels": levels,
                      "train_minutes": round(state["seconds"] / 60, 1), "steps": state["steps"],
                      "params": sum(p.numel() for p in model.parameters()), "codes_used_heldout": len(used),
                      "final_l1": state["losses"][-1][2] if state["losses"] else None, "wer": wer_of(audios)}
    machine = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    print("\n| audio | tokens/s | codes | train CPU min | held-out WER |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r.get('tokens_per_second') or '-'} | {r.get('codes', '-')} | {r.get('train_minutes', '-')} | "
              f"{100 * r['wer']:.1f} % |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": machine, "items": len(held), "corpus": str(corpus),
                                           "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M")}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
