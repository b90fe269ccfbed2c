"""Pilot: can the speech decoder, rather than the LM, close the built-in model's gap to its codec?

    python3 benchmarks/decoder_side_pilot.py tune --out runs/decoder-pilot/gta50          # ~30 min + ~6 min
    python3 benchmarks/decoder_side_pilot.py score --draws 3 --decoders runs/decoder-pilot/gta50

The built-in model reads several WER points above its tokenizer's round trip (benchmarks/codec_floor.py).
Everything here leaves the LM and its sampled codes alone and changes only what turns codes into audio, so
every variant is scored on the *same* draws (paired, no sampling noise between variants):

* ``tune``: ground-truth-aligned fine-tuning of the FSQ decoder (Tacotron 2 trains its vocoder on the
  features its model predicts for the same reason): for training utterances the LM, teacher-forced on the
  true history, samples each speech code as at synthesis (the folder's temperature and top-p); the decoder
  (encoder frozen, so the codes keep their meaning) learns to map those codes, or the true ones with
  probability 1 - ``--gta-fraction``, to the true log-mel. Writes a model folder: the shipped one with that
  decoder. The sampled set is cached (``gta.safetensors`` beside it), so a rerun only retrains.
* ``score``: ``--draws`` draws of the ``spade eval seed=1`` items (a dev set; seed 0 is the test set) with
  their full token ids cached in ``--cache``, then per draw: the sampled codes (``spade eval``'s audio); the
  *expected* FSQ digits under the LM's distribution at each step (``soft T``: the decoder hears the mean of
  what the LM hesitated between, not one draw; ``--soft-full T``: over the whole softmax at ``T``, no nucleus;
  the family does this itself now, over the nucleus it samples from: ``soft_codes``); the decoded log-mel
  sharpened about its mean (``sharpen a``,
  a global-variance post-filter); each folder of ``--decoders``. Per item, the draw a minimum-Bayes-risk
  choice keeps (three draws or more: the one closest, by DTW on the decoded log-mel, to the others) is compared with the
  expected single draw. Capped Whisper WER with paired bootstrap intervals against the sampled codes.
Writes ``benchmarks/results/decoder_side_pilot.json`` (or ``--json``); docs/reference-model.md has the table.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CROP_CODES = 64  # 1.28 s windows for decoder fine-tuning


def speech_rows(speech) -> tuple[int, int]:
    lay = speech.layout
    return lay.speech_start, lay.speech_end


def nucleus(logits: torch.Tensor, cfg, temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(renormalised probabilities, their code order) of what the decode loop samples from under ``cfg`` (its own
    filter, ``_filtered``), optionally at another ``temperature``, per row."""
    from dataclasses import replace

    from spade_tts.families.generate import _filtered

    probs, order = _filtered(logits, cfg if temperature is None else replace(cfg, temperature=temperature))
    return probs / probs.sum(-1, keepdim=True), order


# -- tune: ground-truth-aligned decoder fine-tuning -------------------------------------------------------------
def gta_set(speech, tokens_dir: Path, corpus_dir: Path, targets: int, draws: int, cache: Path) -> dict:
    """True codes, ``draws`` LM-sampled codes (teacher-forced) and the true log-mel of ``targets`` utterances."""
    from safetensors.numpy import load_file, save_file

    from spade_tts.audio import load_audio
    from spade_tts.batching import collate
    from spade_tts.data.build import read_jsonl
    from spade_tts.io import atomic_path
    from spade_tts.reference.dataset import PairSampler, TokenStore

    if cache.is_file():
        return load_file(str(cache))
    store = TokenStore(tokens_dir)
    pairs = PairSampler(store, "train", 4.0, 7.5, seed=0)
    audio = {r["id"]: corpus_dir / r["audio"] for r in read_jsonl(corpus_dir / "manifests" / "train.jsonl")}
    lo, hi = speech_rows(speech)
    cfg = speech.generation_config()
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    chosen = rng.sample(pairs.targets, min(targets, len(pairs.targets)))
    out: dict[str, np.ndarray] = {}
    for start in tqdm(range(0, len(chosen), 16), desc="LM samples on true histories", unit="batch"):
        batch_targets = chosen[start:start + 16]
        examples = []
        for t in batch_targets:
            p = rng.choice([q for q in pairs.prompts[store.items[t]["speaker"]] if q != t])
            examples.append(pairs.vocab.training_ids(store.phones(p).tolist(), store.phones(t).tolist(), store.codes(p),
                                                     store.codes(t), store.frames(t).tolist()))
        batch = collate(examples, pairs.vocab.pad)
        with torch.no_grad():
            hidden = speech.lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            for b, ((ids, loss_from), t) in enumerate(zip(examples, batch_targets)):
                at = [j for j in range(loss_from + 1, len(ids)) if lo <= ids[j] < hi]
                probs, order = nucleus(speech.lm.lm_head(hidden[b, [j - 1 for j in at]])[:, lo:hi], cfg)
                key = str(t)
                out[f"{key}/true"] = store.codes(t)
                for d in range(draws):
                    out[f"{key}/gta{d}"] = order.gather(1, torch.multinomial(probs, 1, generator=gen)).numpy()[:, 0]
                mel = speech.codec.mel.log_mel(load_audio(audio[store.items[t]["id"]]))
                out[f"{key}/mel"] = np.ascontiguousarray(mel[: 2 * len(at)])  # log_mel is column-major
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        save_file(out, str(tmp))
    return out


def tune(args) -> None:
    from spade_tts.codec.fsq import FSQTokenizer
    from spade_tts.families.registry import load_speech_lm

    speech = load_speech_lm(args.model or None)
    speech.lm.float().eval()
    tok = speech.codec
    out = Path(args.out)
    data = gta_set(speech, Path(args.tokens), Path(args.corpus), args.targets, 2, out.parent / "gta.safetensors")
    keys = sorted({k.split("/")[0] for k in data}, key=int)

    def norm(k: str) -> torch.Tensor:
        return ((torch.from_numpy(data[f"{k}/mel"]) - tok.mel_mean) / tok.mel_std).T.float()

    utts = [(torch.from_numpy(data[f"{k}/true"]), [torch.from_numpy(data[f"{k}/gta{d}"]) for d in range(2)], norm(k))
            for k in keys]
    val, train = utts[:100], [u for u in utts[100:] if len(u[0]) >= CROP_CODES]
    net = copy.deepcopy(tok.net)
    params = list(net.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(0)

    @torch.no_grad()
    def held_out_l1() -> dict:
        return {name: round(float(np.mean([(net.decoder(net.fsq.values((c if name == "true" else g[0])[None]))[0] - m)
                                           .abs().mean().item() for c, g, m in val])), 4) for name in ("true", "gta")}

    print("held-out L1 before", held_out_l1())
    for step in tqdm(range(args.steps), desc="decoder", unit="step"):
        for g in opt.param_groups:
            g["lr"] = args.lr * max(0.05, 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        xs, ys = [], []
        for i in rng.integers(0, len(train), 16):
            codes, sampled, mel = train[i]
            s = int(rng.integers(0, len(codes) - CROP_CODES + 1))
            c = sampled[int(rng.integers(2))] if rng.random() < args.gta_fraction else codes
            xs.append(c[s:s + CROP_CODES])
            ys.append(mel[:, 2 * s:2 * (s + CROP_CODES)])
        loss = (net.decoder(net.fsq.values(torch.stack(xs))) - torch.stack(ys)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    print("held-out L1 after", held_out_l1())
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(speech.path, out)
    FSQTokenizer(tok.config, net.eval(), tok.mel_mean, tok.mel_std).save(out)
    print(f"wrote {out} (the model of {speech.path} with the tuned decoder)")


# -- score: decoder-side variants on the same draws -------------------------------------------------------------
def draws_of(speech, items, n: int, cache: Path) -> list[list[dict]]:
    """``n`` draws (sampling seeds 1000 + d) of every item: prompt and generated ids, cached after each draw."""
    from spade_tts.audio import load_audio
    from spade_tts.families.generate import generate
    from spade_tts.io import write_json
    from spade_tts.synthesis import PROMPT_RATE

    saved = json.loads(cache.read_text()) if cache.is_file() else []
    requests = [speech.generation_request(it["target_text"], it["prompt_text"],
                                          speech.encode_audio(load_audio(it["prompt_wav"]), PROMPT_RATE)) for it in items]
    for d in range(len(saved), n):
        cfg = speech.generation_config(seed=1000 + d, decoder="static-int8-compiled")
        row = []
        for i, req in enumerate(tqdm(requests, desc=f"draw {d + 1}/{n}", unit="item")):
            (gen,), _ = generate(speech, [req], cfg, [i])
            row.append({"prompt": list(req.prompt), "ids": list(gen.ids)})
        saved.append(row)
        write_json(cache, saved)
    return saved[:n]


def mbr_choice(mels: list[np.ndarray]) -> int:
    """The draw with the smallest summed DTW distance (per path step) to the others."""
    import librosa

    dist = np.zeros((len(mels), len(mels)))
    for a in range(len(mels)):
        for b in range(a + 1, len(mels)):
            acc, path = librosa.sequence.dtw(X=mels[a].T, Y=mels[b].T, metric="euclidean")
            dist[a, b] = dist[b, a] = acc[-1, -1] / len(path)
    return int(dist.sum(1).argmin())


def score(args) -> None:
    from spade_tts.evaluation.evaluate import WER_CAP, machine_info
    from spade_tts.evaluation.items import heldout_eval_items
    from spade_tts.evaluation.stats import paired_bootstrap
    from spade_tts.families.registry import load_speech_lm
    from spade_tts.io import write_json
    from spade_tts.scoring import get_transcriber, wer

    items = heldout_eval_items(args.corpus_eval, 15, 4.0, args.item_seed)
    speech = load_speech_lm(args.model or None)
    draws = draws_of(speech, items, args.draws, Path(args.cache))
    speech.lm.float().eval()
    tok, asr = speech.codec, get_transcriber(None)
    lo, hi = speech_rows(speech)
    cfg = speech.generation_config()
    digits = tok.net.fsq.values(torch.arange(tok.vocab_size)[None])[0].T  # (codes, channels)
    decoders = {"sampled codes": tok.net.decoder}
    decoders.update({f"decoder of {f}": load_speech_lm(f).codec.net.decoder for f in args.decoders})

    def to_mel(decoder, values: torch.Tensor, sharpen: float = 1.0) -> np.ndarray:
        with torch.no_grad():
            mel = (decoder(values.T[None])[0].T * tok.mel_std + tok.mel_mean).numpy()
        if sharpen == 1.0:  # exactly spade eval's mel: Griffin-Lim and Whisper turn rounding into different words
            return mel
        mean = mel.mean(0, keepdims=True)
        return mean + sharpen * (mel - mean)

    names = list(decoders) + [f"soft T={t:g}" for t in args.soft] + [f"soft T={t:g}, no nucleus" for t in args.soft_full] \
        + [f"sharpen {a:g}" for a in args.sharpen]
    wers = {name: np.zeros((len(draws), len(items))) for name in names}
    sampled_mels = [[None] * len(items) for _ in draws]
    for d, row in enumerate(draws):
        audio = {name: [] for name in names}
        for i, rec in enumerate(tqdm(row, desc=f"decoding draw {d + 1}", unit="item")):
            ids = rec["ids"]
            at = [j for j, t in enumerate(ids) if lo <= t < hi]
            codes = torch.tensor([ids[j] - lo for j in at], dtype=torch.long)
            mels = {name: to_mel(dec, digits[codes]) for name, dec in decoders.items()}
            if args.soft or args.soft_full:
                with torch.no_grad():
                    logits = speech.lm(torch.tensor([rec["prompt"] + ids])).logits[0, len(rec["prompt"]) - 1:-1]
                for t in args.soft:
                    probs, order = nucleus(logits[at][:, lo:hi], cfg, t)
                    mels[f"soft T={t:g}"] = to_mel(tok.net.decoder, (probs[..., None] * digits[order]).sum(1))
                for t in args.soft_full:  # the whole softmax: no sort at all, the tail pulls toward the mean code
                    mels[f"soft T={t:g}, no nucleus"] = to_mel(tok.net.decoder,
                                                               torch.softmax(logits[at][:, lo:hi] / t, -1) @ digits)
            for a in args.sharpen:
                mels[f"sharpen {a:g}"] = to_mel(tok.net.decoder, digits[codes], a)
            sampled_mels[d][i] = mels["sampled codes"]
            for name in names:
                audio[name].append(tok.mel.invert(mels[name], n_iter=tok.config.griffin_lim_iters, seed=0))
        for name in names:
            hyps = asr.transcribe(audio[name])
            wers[name][d] = [min(wer(it["target_text"], h), WER_CAP) for it, h in zip(items, hyps)]
    base = wers["sampled codes"]
    rows = {name: {"wer_capped": float(w.mean()), "per_draw": w.mean(1).tolist(),
                   "vs_sampled": None if name == "sampled codes" else paired_bootstrap(base.ravel(), w.ravel())}
            for name, w in wers.items()}
    if len(draws) > 2:  # with two draws the summed distances tie
        pick = [mbr_choice([sampled_mels[d][i] for d in range(len(draws))]) for i in range(len(items))]
        chosen = base[pick, np.arange(len(items))]
        rows["MBR choice among the draws"] = {"wer_capped": float(chosen.mean()),
                                             "vs_sampled": paired_bootstrap(base.mean(0), chosen)}
        rows["oracle (lowest WER draw)"] = {"wer_capped": float(base.min(0).mean()), "vs_sampled": None}
    print(f"\n{len(items)} items (item seed {args.item_seed}) x {len(draws)} draws, capped WER, "
          f"{machine_info('cpu')['cpu']}\n\n| decoding | capped WER | vs sampled codes [95 % CI] |\n|---|---|---|")
    for name, r in rows.items():
        gap = r["vs_sampled"]
        ci = f"{gap['delta'] * 100:+.1f} [{gap['ci95'][0] * 100:+.1f}, {gap['ci95'][1] * 100:+.1f}]" if gap else ""
        print(f"| {name} | {r['wer_capped'] * 100:.1f} % | {ci} |")
    write_json(args.json, {"items": len(items), "item_seed": args.item_seed, "draws": len(draws),
                           "machine": machine_info("cpu"), "rows": rows,
                           "wer": {name: w.tolist() for name, w in wers.items()}})
    print(f"wrote {args.json}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="a model folder (default: the built-in model)")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tune", help="fine-tune the decoder on the LM's ground-truth-aligned samples")
    t.add_argument("--out", required=True, help="the model folder to write")
    t.add_argument("--tokens", default=str(ROOT / "data" / "reference_tokens-fsq3k"))
    t.add_argument("--corpus", default=str(ROOT / "data" / "corpus3k"), help="the corpus the tokens were made from")
    t.add_argument("--targets", type=int, default=2400)
    t.add_argument("--gta-fraction", type=float, default=0.5)
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--lr", type=float, default=3e-4)
    s = sub.add_parser("score", help="decoder-side variants on the same LM draws")
    s.add_argument("--corpus-eval", default=str(ROOT / "data" / "corpus"))
    s.add_argument("--item-seed", type=int, default=1, help="item choice (1: a dev set; 0 is the test set)")
    s.add_argument("--draws", type=int, default=3)
    s.add_argument("--cache", default=str(ROOT / "runs" / "decoder-pilot" / "draws.json"))
    s.add_argument("--decoders", nargs="*", default=[], help="model folders whose decoder to try (from `tune`)")
    s.add_argument("--soft", type=float, nargs="*", default=[0.7, 1.0])
    s.add_argument("--soft-full", type=float, nargs="*", default=[], help="soft digits over the whole softmax")
    s.add_argument("--sharpen", type=float, nargs="*", default=[1.2])
    s.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "decoder_side_pilot.json"))
    args = ap.parse_args()
    (tune if args.command == "tune" else score)(args)


if __name__ == "__main__":
    main()
