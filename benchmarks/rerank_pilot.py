"""Pilot: would drawing several samples per item and keeping the one the LM itself likes best read better?

    python3 benchmarks/rerank_pilot.py                       # 105 dev items (seed 1), 4 draws each
    python3 benchmarks/rerank_pilot.py --draws 2 --items-per-speaker 4
    python3 benchmarks/rerank_pilot.py --item-seed 0 --json benchmarks/results/rerank_pilot_test.json   # test items

The built-in model reads ~7 WER points above its tokenizer's floor (benchmarks/codec_floor.py), and one
draw per item moves an item's WER a lot between draws. This measures, on the held-out items `spade eval
seed=1` speaks (a dev set: seed 0's items are the test set every figure is reported on), each draw's
Whisper WER and its mean log-probability of the speech tokens under the model at temperature 1 (one
teacher-forced forward, no ASR), then compares draw 0 (one draw, as `spade eval` takes) with the draw of highest
mean log-probability (what a decoder could keep without a recognizer) and with the oracle (the lowest WER,
a bound no decoder reaches). Paired bootstrap intervals against draw 0. Writes
``benchmarks/results/rerank_pilot.json`` (or ``--json``) and prints the table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def mean_logprob(speech, prompt: list[int], ids: list[int]) -> float:
    """Mean log-probability (temperature 1) of the speech tokens among ``ids``, given ``prompt``."""
    lay = speech.layout
    seq = torch.tensor([prompt + ids], device=next(speech.lm.parameters()).device)
    with torch.no_grad():
        logits = speech.lm(seq).logits[0, len(prompt) - 1:-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, seq[0, len(prompt):, None])[:, 0]
    mask = torch.tensor([lay.speech_start <= i < lay.speech_end for i in ids], device=lp.device)
    return float(lp[mask].mean()) if mask.any() else float("-inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="a folder (default: the built-in model)")
    ap.add_argument("--corpus", default=str(ROOT / "data" / "corpus"))
    ap.add_argument("--items-per-speaker", type=int, default=15)
    ap.add_argument("--item-seed", type=int, default=1, help="item choice (1: a dev set; 0 is the test set)")
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--first-seed", type=int, default=1000,
                    help="sampling seed of draw 0 (draw d: + d); 0 with --item-seed 0 = `spade eval`'s own draw")
    ap.add_argument("--decoder", default="static-int8-compiled")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "rerank_pilot.json"))
    args = ap.parse_args()
    if args.draws < 2:
        raise SystemExit(f"--draws {args.draws}: reranking needs at least 2 draws per item")

    from spade_tts.audio import load_audio
    from spade_tts.evaluation.evaluate import WER_CAP, machine_info
    from spade_tts.evaluation.items import heldout_eval_items
    from spade_tts.evaluation.stats import paired_bootstrap
    from spade_tts.families.generate import generate
    from spade_tts.families.registry import load_speech_lm
    from spade_tts.io import write_json
    from spade_tts.scoring import get_transcriber, wer
    from spade_tts.synthesis import PROMPT_RATE

    items = heldout_eval_items(args.corpus, args.items_per_speaker, 4.0, args.item_seed)
    speech = load_speech_lm(args.model or None)
    asr = get_transcriber(None)
    requests = [speech.generation_request(it["target_text"], it["prompt_text"],
                                          speech.encode_audio(load_audio(it["prompt_wav"]), PROMPT_RATE))
                for it in items]
    wers = np.zeros((len(items), args.draws))
    scores = np.zeros_like(wers)
    for d in range(args.draws):
        cfg = speech.generation_config(seed=args.first_seed + d, decoder=args.decoder)  # the folder's temperature / top-p
        for i, req in enumerate(tqdm(requests, desc=f"draw {d + 1}/{args.draws}", unit="item")):
            (gen,), _ = generate(speech, [req], cfg, [i])
            audio, _ = speech.decode_audio(speech.ids_to_codes(speech.speech_ids(gen.ids)))
            wers[i, d] = min(wer(items[i]["target_text"], asr.transcribe([np.asarray(audio)])[0]), WER_CAP)
            scores[i, d] = mean_logprob(speech, req.prompt, gen.ids)
    rows = np.arange(len(items))
    picks = {"draw 0 (one draw, as spade eval)": wers[:, 0],
             "mean of the draws (expected one draw)": wers.mean(1),
             "highest mean log-probability": wers[rows, scores.argmax(1)],
             "lowest mean log-probability": wers[rows, scores.argmin(1)],
             "oracle (lowest WER)": wers.min(1)}
    corr = float(np.mean([np.corrcoef(scores[i], wers[i])[0, 1] for i in rows
                          if wers[i].std() > 0 and scores[i].std() > 0]))
    print(f"\n{len(items)} items (item seed {args.item_seed}), {args.draws} draws each, capped WER, {machine_info('cpu')['cpu']}; "
          f"within-item correlation of log-probability and WER: {corr:+.2f}")
    print("\n| choice | capped WER | vs draw 0 [95 % CI] |\n|---|---|---|")
    result = {}
    for name, w in picks.items():
        gap = paired_bootstrap(wers[:, 0], w) if name != next(iter(picks)) else None
        result[name] = {"wer_capped": float(w.mean()), "vs_draw0": gap}
        ci = f"{gap['delta'] * 100:+.1f} [{gap['ci95'][0] * 100:+.1f}, {gap['ci95'][1] * 100:+.1f}]" if gap else ""
        print(f"| {name} | {w.mean() * 100:.1f} % | {ci} |")
    write_json(args.json, {"items": len(items), "item_seed": args.item_seed, "draws": args.draws,
                           "first_seed": args.first_seed,
                           "decoder": args.decoder, "machine": machine_info("cpu"), "logprob_wer_corr": corr,
                           "choices": result, "wer": wers.tolist(), "mean_logprob": scores.tolist()})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
