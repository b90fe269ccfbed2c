"""Soft decoding against the drawn codes, measured with `spade eval` itself over several sampling seeds.

    python3 benchmarks/soft_codes.py                                  # test items, sampling seeds 0-3
    python3 benchmarks/soft_codes.py --models built-in-student --seeds 0 1 --json benchmarks/results/soft_codes_student.json

For each sampling seed, `spade eval` runs once with ``soft_codes=false`` (the codec decodes the codes the LM
drew) and once with ``soft_codes=true`` (it decodes each speech token's mean code value over the nucleus the
token was drawn from; ``GenerationConfig.soft_codes``). The LM draws the same codes in both, so the difference
is paired on identical draws; pooled over seeds x items it gives the expected effect, with a paired bootstrap
interval. Each run is a resumable `spade eval` folder under ``--out``: an interrupted benchmark picks up where it
stopped (a rerun with every run finished only reads them). The eval RTF columns come from one timed pass per run,
at different times; what soft decoding costs is measured apart (``--timing-items``, one process, the first model):
the items are spoken at batch 1 with and without it in turn, ``--timing-reps`` times after one warm-up pass, and
the LM-only and end-to-end real-time factors of both are compared as a ratio measured in that one run.
Prints tables and writes ``benchmarks/results/soft_codes.json`` (or ``--json``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(args, seed: int, soft: bool) -> dict:
    """One `spade eval` of ``args.models`` (``spade-eval/1`` results), resumed from its folder when it exists."""
    from spade_tts.evaluation.evaluate import EvalConfig, evaluate_models

    cfg = EvalConfig(models=list(args.models), seed=args.item_seed, sampling_seed=seed, soft_codes=soft,
                     items_per_speaker=args.items_per_speaker, decoder=args.decoder, rtf_runs=1,
                     rtf_items=args.rtf_items, dnsmos=False, corpus_dir=args.corpus_dir,
                     out_dir=str(Path(args.out) / f"seed{seed}-{'soft' if soft else 'drawn'}"))
    return evaluate_models(cfg)


def paired_timing(args) -> dict:
    """LM-only and end-to-end RTF with and without soft decoding, alternating in one process (see the docstring)."""
    from spade_tts.audio import load_audio
    from spade_tts.evaluation.items import heldout_eval_items
    from spade_tts.evaluation.models import parse_model_specs
    from spade_tts.families.generate import generate
    from spade_tts.families.registry import load_speech_lm
    from spade_tts.synthesis import PROMPT_RATE

    items = heldout_eval_items(args.corpus_dir, args.items_per_speaker, 4.0, args.item_seed)[:args.timing_items]
    spec = parse_model_specs(args.models[:1])[0]
    speech = load_speech_lm(spec.path or None)
    requests = [speech.generation_request(it["target_text"], it["prompt_text"],
                                          speech.encode_audio(load_audio(it["prompt_wav"]), PROMPT_RATE)) for it in items]
    totals = {soft: {"lm": 0.0, "e2e": 0.0, "audio": 0.0} for soft in (False, True)}
    for rep in range(args.timing_reps + 1):  # pass 0 warms up (and compiles the step, for the -compiled decoders)
        for soft in (False, True):
            cfg = speech.generation_config(seed=0, decoder=args.decoder, soft_codes=soft)
            for i, req in enumerate(requests):
                start = time.perf_counter()
                (gen,), stats = generate(speech, [req], cfg, [i])
                _, audio, rate = speech.decode_generation(gen)
                if rep:
                    t = totals[soft]
                    t["lm"] += stats.lm_seconds
                    t["e2e"] += time.perf_counter() - start
                    t["audio"] += len(audio) / rate
    rtf = {soft: {k: t[k] / t["audio"] for k in ("lm", "e2e")} for soft, t in totals.items()}
    return {"model": spec.label, "items": len(items), "reps": args.timing_reps, "decoder": args.decoder,
            "rtf_drawn": rtf[False], "rtf_soft": rtf[True],
            "soft_over_drawn": {k: rtf[True][k] / rtf[False][k] for k in ("lm", "e2e")}}


def main() -> None:
    from spade_tts.evaluation.evaluate import capped_wers, machine_info
    from spade_tts.evaluation.stats import paired_bootstrap
    from spade_tts.io import write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["built-in"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="sampling seeds")
    p.add_argument("--item-seed", type=int, default=0, help="0: the test items every figure is reported on")
    p.add_argument("--items-per-speaker", type=int, default=15)
    p.add_argument("--decoder", default="static-int8-compiled")
    p.add_argument("--rtf-items", type=int, default=8, help="items per timed pass (the RTF cost of soft decoding)")
    p.add_argument("--corpus-dir", default="data/corpus")
    p.add_argument("--timing-items", type=int, default=8, help="items of the paired timing (0: none)")
    p.add_argument("--timing-reps", type=int, default=3, help="timed passes of the paired timing")
    p.add_argument("--out", default="runs/soft-codes")
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/soft_codes.json"))
    args = p.parse_args()

    results = {(s, t): {m["label"]: m for m in run(args, s, t)["models"]} for s in args.seeds for t in (False, True)}
    rows = {}
    for label in results[(args.seeds[0], False)]:
        def pooled(t: bool, key: str) -> np.ndarray:  # (seeds, items): capped WER or SIM
            per_seed = [results[(s, t)][label]["per_item"] for s in args.seeds]
            return np.array([capped_wers(r) if key == "wer" else [x[key] for x in r] for r in per_seed], dtype=float)

        hard_wer, hard_sim = pooled(False, "wer"), pooled(False, "sim")
        for t in (False, True):
            wer, sim = pooled(t, "wer"), pooled(t, "sim")
            rtf = [results[(s, t)][label]["rtf"] for s in args.seeds]
            rows[f"{label}, soft_codes={str(t).lower()}"] = {
                "model": label, "soft_codes": t, "wer_capped": float(wer.mean()),
                "per_seed": wer.mean(1).tolist(), "sim": float(sim.mean()),
                "rtf_lm": float(np.median([r["lm"] for r in rtf])), "rtf_e2e": float(np.median([r["e2e"] for r in rtf])),
                "vs_drawn": None if not t else {"wer_capped": paired_bootstrap(hard_wer.ravel(), wer.ravel()),
                                                 "sim": paired_bootstrap(hard_sim.ravel(), sim.ravel())}}
    n_items = len(next(iter(results.values()))[label]["per_item"])
    print(f"\n{n_items} items (item seed {args.item_seed}) x sampling seeds {args.seeds}, decoder={args.decoder}, "
          f"{machine_info('cpu')['cpu']}\n\n| model, decoding | capped WER (per seed) | vs drawn codes [95 % CI] | "
          "SIM | RTF LM / e2e (median of seeds) |\n|---|---|---|---|---|")
    for name, r in rows.items():
        gap = r["vs_drawn"] and r["vs_drawn"]["wer_capped"]
        ci = f"{gap['delta'] * 100:+.1f} [{gap['ci95'][0] * 100:+.1f}, {gap['ci95'][1] * 100:+.1f}]" if gap else ""
        seeds = ", ".join(f"{w * 100:.1f}" for w in r["per_seed"])
        print(f"| {name} | {r['wer_capped'] * 100:.1f} % ({seeds}) | {ci} | {r['sim']:.3f} | "
              f"{r['rtf_lm']:.3f} / {r['rtf_e2e']:.3f} |")
    timing = paired_timing(args) if args.timing_items > 0 else None
    if timing:
        print(f"\npaired timing, {timing['model']}, {timing['items']} items x {timing['reps']} passes each way, "
              f"batch 1, decoder={args.decoder}\n\n| decoding | RTF LM | RTF e2e |\n|---|---|---|")
        for name, key in (("drawn codes", "rtf_drawn"), ("soft codes", "rtf_soft")):
            print(f"| {name} | {timing[key]['lm']:.3f} | {timing[key]['e2e']:.3f} |")
        ratio = timing["soft_over_drawn"]
        print(f"| soft / drawn | {ratio['lm']:.3f}x | {ratio['e2e']:.3f}x |")
    write_json(args.json, {"items": n_items, "item_seed": args.item_seed, "sampling_seeds": args.seeds,
                           "decoder": args.decoder, "machine": machine_info("cpu"), "rows": rows, "timing": timing})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
