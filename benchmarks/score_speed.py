"""Wall time of WLI scoring passes on the built-in model: the scoring loop as it was, and as it is.

    python3 benchmarks/score_speed.py                               # 28 items, full model + layers 0, 5, 10
    python3 benchmarks/score_speed.py --items-per-speaker 7 --layers all --modes fast
    python3 benchmarks/score_speed.py --model runs/reference-cpu/best --items-per-speaker 8 --layers all --modes fast
    python3 benchmarks/score_speed.py --items-per-speaker 8 --layers all --modes fast --decoder static-int8

A WLI pass synthesizes every item with one layer skipped and transcribes it with Whisper. Modes
(each a ``ScoreConfig``; everything else, items, seed and decoding, is the same):

  baseline  the loop before issue 8's changes: finished rows stay in the batch, no length cap
            besides the 20 s guard, Whisper runs after each synthesis pass on the same cores
  fast      rows leave the batch as their items end, items are cut at 2.5x the length their
            prompt's speaking rate predicts, Whisper transcribes pass k on one thread while the
            LM synthesizes pass k + 1 on the others
  serial    as fast, but Whisper runs after each pass, and the LM and Whisper each use every core

Modes run one after the other, in a fresh state folder each (nothing is read from a cache), so
compare them only within one run of this script, and read the load average it records. The
table gives wall seconds per pass and per layer-item and the ratio to the first mode.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = {
    "baseline": dict(drop_finished=False, max_length_ratio=0.0, overlap_asr=False),
    "fast": dict(drop_finished=True, max_length_ratio=2.5, overlap_asr=True),
    "serial": dict(drop_finished=True, max_length_ratio=2.5, overlap_asr=False),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the built-in model)")
    ap.add_argument("--corpus-dir", default=str(ROOT / "data" / "corpus"))
    ap.add_argument("--items-per-speaker", type=int, default=4)
    ap.add_argument("--layers", default="0,5,10", help="comma-separated layers to skip, or 'all'")
    ap.add_argument("--modes", default="baseline,fast")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--decoder", default="static", help="the passes' decode engine: static (float32) or static-int8")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "score_speed_cpu.json"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from benchmarks.decode_speed import cpu_model
    from spade_tts.importance.layer_importance import ScoreConfig, ScoringRun
    from spade_tts.evaluation.items import heldout_eval_items
    from spade_tts.families.registry import load_speech_lm
    from spade_tts.pruning.layers import decoder_layers, model_fingerprint
    from spade_tts.scoring import get_transcriber

    speech = load_speech_lm(args.model)
    n = len(decoder_layers(speech.lm))
    layers = list(range(n)) if args.layers == "all" else [int(x) for x in args.layers.split(",") if x]
    items = heldout_eval_items(args.corpus_dir, args.items_per_speaker, 4.0, 0)
    skips = [[]] + [[i] for i in layers]
    threads = torch.get_num_threads()
    machine = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
               "platform": platform.platform(), "load_average_before": list(os.getloadavg()),
               "model": args.model or "built-in", "decoder": args.decoder}
    print(f"# {machine['cpu']}, {machine['cpu_count']} CPUs, torch {torch.__version__} ({threads} threads); "
          f"{len(items)} items, passes: full + skip {layers}")
    results = []
    for mode in [m for m in args.modes.split(",") if m]:
        cfg = ScoreConfig(items_per_speaker=args.items_per_speaker, corpus_dir=args.corpus_dir,
                          batch_size=args.batch_size, decoder=args.decoder, **MODES[mode])
        overlap = cfg.overlap_asr
        asr = get_transcriber(None, cpu_threads=1 if overlap else threads)
        asr.transcribe([np.zeros(1600, dtype=np.float32)])  # load Whisper outside the clock
        with tempfile.TemporaryDirectory() as tmp:
            cfg.out_dir = tmp
            run = ScoringRun(cfg, speech, items, model_fingerprint(speech.lm), asr)  # it splits the cores itself
            start = time.perf_counter()
            wers = run.wer_many(skips, desc=mode)
            wall = time.perf_counter() - start
            runs = run.state["runs"]
            audio = sum(r["seconds"] for k in runs for r in runs[k]["per_item"])
            cut = sum(bool(r.get("truncated")) for k in runs for r in runs[k]["per_item"])
        row = {"mode": mode, "settings": MODES[mode], "passes": len(skips), "items": len(items), "seconds": wall,
               "seconds_per_pass": wall / len(skips), "seconds_per_layer_item": wall / (len(skips) * len(items)),
               "audio_seconds": audio, "items_cut": cut, "wer": dict(zip(["full"] + [str(i) for i in layers], wers))}
        results.append(row)
        print(f"{mode:9s} {wall:7.1f} s  {row['seconds_per_pass']:6.1f} s/pass  {row['seconds_per_layer_item']:5.2f} "
              f"s/layer-item  audio {audio:6.1f} s  cut {cut}  WER " + " ".join(f"{k}:{100 * v:.0f}%"
                                                                           for k, v in row["wer"].items()), flush=True)
    machine["load_average_after"] = list(os.getloadavg())
    print("\n| mode | s per pass | s per layer-item | vs first |\n|---|---|---|---|")
    for row in results:
        print(f"| {row['mode']} | {row['seconds_per_pass']:.1f} | {row['seconds_per_layer_item']:.2f} | "
              f"{results[0]['seconds'] / row['seconds']:.2f}x |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "results": results, "date": time.strftime("%Y-%m-%d %H:%M:%S")},
                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
