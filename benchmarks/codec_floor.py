"""What the built-in tokenizer lets any LM on it reach, on `spade eval`'s own items, by Griffin-Lim iterations.

    python3 benchmarks/codec_floor.py                          # 105 items (15 per voice), 32,64,128 iterations
    python3 benchmarks/codec_floor.py --iters 32 --items-per-speaker 4

`spade codec eval` scores the tokenizer on its own held-out sample; this script takes exactly the items
`spade eval items_per_speaker=N` speaks (same seed, same pairing) and scores each target's *recording*
as recorded and after tokens -> log-mel -> Griffin-Lim, with the scorer the models are scored with
(Whisper WER, plain and capped at 100 % per item). So an LM's WER on those items can be read against
the floor its tokenizer sets, and the vocoder's iterations against their cost (Griffin-Lim's real-time
factor, seconds of compute per second of audio). Paired bootstrap intervals against the first
iteration count. Writes ``benchmarks/results/codec_floor.json`` (or ``--json``) and prints the table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / "data" / "corpus"))
    ap.add_argument("--model", default="", help="a builtin-family folder whose tokenizer to use (default: shipped)")
    ap.add_argument("--items-per-speaker", type=int, default=15)
    ap.add_argument("--iters", default="32,64,128", help="Griffin-Lim iteration counts, the first is the reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "codec_floor.json"))
    args = ap.parse_args()

    from spade_tts.audio import load_audio
    from spade_tts.codec import load_tokenizer
    from spade_tts.evaluation.evaluate import WER_CAP, machine_info
    from spade_tts.evaluation.items import heldout_eval_items
    from spade_tts.evaluation.stats import paired_bootstrap
    from spade_tts.families.builtin import codec_folder
    from spade_tts.families.registry import model_folder
    from spade_tts.io import write_json
    from spade_tts.scoring import get_transcriber, wer

    iters = [int(x) for x in args.iters.split(",")]
    if not iters or min(iters) < 1:
        raise SystemExit(f"--iters {args.iters}: give positive iteration counts, e.g. 32,64")
    items = heldout_eval_items(args.corpus, args.items_per_speaker, 4.0, args.seed)
    tok = load_tokenizer(codec_folder(model_folder(args.model or None)))
    asr = get_transcriber(None)
    wers = {"original": [], **{n: [] for n in iters}}
    gl_seconds = dict.fromkeys(iters, 0.0)
    for it in tqdm(items, desc="codec floor", unit="item"):
        audio = load_audio(it["reference_wav"])
        mel = tok.decode_mel(tok.encode(audio))
        wers["original"].append(wer(it["target_text"], asr.transcribe([audio])[0]))
        for n in iters:
            start = time.perf_counter()
            out = tok.mel.invert(mel, n_iter=n, seed=args.seed)
            gl_seconds[n] += time.perf_counter() - start
            wers[n].append(wer(it["target_text"], asr.transcribe([out])[0]))
    audio_s = sum(it["reference_seconds"] for it in items)

    def capped(k):
        return [min(w, WER_CAP) for w in wers[k]]

    rows = {}
    print(f"\n{len(items)} items ({args.items_per_speaker} per voice), Whisper tiny.en, {machine_info('cpu')['cpu']}")
    print(f"\n| audio | WER | capped WER | capped vs {iters[0]} iterations [95 % CI] | Griffin-Lim RTF |\n|---|---|---|---|---|")
    for k in wers:
        row = {"wer": float(np.mean(wers[k])), "wer_capped": float(np.mean(capped(k)))}
        if k != "original":
            row["griffin_lim_rtf"] = gl_seconds[k] / audio_s
            if k != iters[0]:
                row["capped_vs_first"] = paired_bootstrap(capped(iters[0]), capped(k))
        rows[str(k)] = row
        gap = row.get("capped_vs_first")
        gap_s = f"{100 * gap['delta']:+.1f} [{100 * gap['ci95'][0]:+.1f}, {100 * gap['ci95'][1]:+.1f}]" if gap else ""
        name = "recording" if k == "original" else f"tokens -> {k} Griffin-Lim iterations"
        rtf = f"{row['griffin_lim_rtf']:.3f}" if "griffin_lim_rtf" in row else ""
        print(f"| {name} | {100 * row['wer']:.1f} % | {100 * row['wer_capped']:.1f} % | {gap_s} | {rtf} |")
    write_json(args.json, {"command": "python3 " + " ".join(sys.argv), "machine": machine_info("cpu"),
                           "items": [it["id"] for it in items], "audio_seconds": audio_s, "rows": rows,
                           "per_item": {str(k): v for k, v in wers.items()}})
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
