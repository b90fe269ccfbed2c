"""Where the built-in model's decode loop spends its time at batch 1, and what each known lever buys.

    python3 benchmarks/generation_anatomy.py --threads 2 --prompts 4             # the table in docs/decoding.md
    python3 benchmarks/generation_anatomy.py --threads 2 --prompts 4 --compile   # + compiled steps (~2-3 min)
    python3 benchmarks/generation_anatomy.py --decoder static-int8              # the loop on int8 weights

1. **The loop.** Held-out prompts (one per voice, ``spade eval``'s order) are spoken at batch 1 with the
   family's own sampling, through the steps of ``spade_tts.families.generate.generate`` (prefill, then the
   rule's ``choose`` and the engine's ``step`` in turn), timed part by part. The LM real-time factor is the
   loop's seconds over the seconds of speech its codes make (``spade eval``'s LM-only RTF).
2. **The rule replayed.** The same rule, fed the logits it saw in the loop one after another with no decode
   step in between (the same tokens come out: the draws are the items' own). The ratio of (1)'s and (2)'s
   time per choice is what a decode step costs the small operations after it: each step reads about
   12 MB of weights (the 15,403-row head alone 11.8 MB), which evicts the caches those operations run from.
3. **The step alone**, per engine: the default (``decoder=static``), with fused q/k/v and gate/up matmuls,
   with int8 weights (``decoder=static-int8``), and with ``--compile`` the step compiled by inductor
   for static shapes and for any cache length, float and int8 (``decoder=static-compiled``,
   ``static-int8-compiled``; compile time reported). Medians of ``--reps`` steps mid-sequence.
4. **Other shapes** (``--shapes 8x192x768,...``: layers x hidden x feed-forward): the same step for an LM of
   that shape at random initialisation (same vocabulary, 64-wide heads, one key/value head), twice in turn,
   and the LM real-time factor it would run at: its step plus the rest of (1)'s time per token (the rule,
   prefill, bookkeeping), times (1)'s tokens per second of speech. How the next model's shape was chosen.

Writes ``benchmarks/results/generation_anatomy_cpu.json`` (or ``--json``) and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from speculative import _timed, load_requests  # noqa: E402  (one home for the held-out prompts and the timer)


@torch.no_grad()
def loop_anatomy(speech, requests, cfg) -> tuple[dict, list]:
    """generate()'s loop for each request at batch 1, timed part by part; (totals, per item (logits, tokens))."""
    from spade_tts.families.generate import decode_engine, left_padded

    tot = {"prefill_s": 0.0, "step_s": 0.0, "choose_s": 0.0, "loop_s": 0.0, "steps": 0, "speech_tokens": 0}
    seen = []
    for i, req in enumerate(requests):
        sampler = speech.sampler([req], cfg, [i])
        ids, mask = left_padded([req.prompt], speech.pad_id)
        engine = decode_engine(speech.lm, 1, ids.shape[1] + sampler.max_steps + 1, sampler.rows, cfg.decoder)
        logits_seen = []
        start = time.perf_counter()
        logits = engine.prefill(ids, mask)
        tot["prefill_s"] += time.perf_counter() - start
        step = 0
        while True:
            logits_seen.append(logits.float().clone())
            t = time.perf_counter()
            nxt = sampler.choose(step, logits.float(), [0])
            tot["choose_s"] += time.perf_counter() - t
            step += 1
            if sampler.finished(0) or step >= sampler.max_steps:
                break
            t = time.perf_counter()
            logits = engine.step(torch.tensor(nxt, dtype=torch.long))
            tot["step_s"] += time.perf_counter() - t
        tot["loop_s"] += time.perf_counter() - start
        tot["steps"] += step
        ids_out = sampler.result(0).ids
        tot["speech_tokens"] += len(speech.speech_ids(ids_out))
        seen.append((logits_seen, ids_out))
    return tot, seen


def replay_rule(speech, requests, cfg, seen) -> tuple[float, bool]:
    """Seconds of the rule's choices on the recorded logits, no decode step between them; same tokens?"""
    seconds, same = 0.0, True
    for i, (req, (logits_seen, ids_out)) in enumerate(zip(requests, seen)):
        sampler = speech.sampler([req], cfg, [i])
        for step, logits in enumerate(logits_seen):
            t = time.perf_counter()
            sampler.choose(step, logits, [0])
            seconds += time.perf_counter() - t
        same &= sampler.result(0).ids == ids_out
    return seconds, same


def nucleus_sizes(speech, requests, cfg, seen) -> list[int]:
    """Codes in the top-p nucleus of every recorded speech distribution (at the sampling temperature)."""
    rule = speech.sampler(requests[:1], cfg, [0])  # the phone-forced rule: speech codes are columns [lo, hi)
    lo, hi = rule.lo, rule.hi
    sizes = []
    for logits_seen, _ in seen:
        probs = torch.softmax(torch.cat(logits_seen)[:, lo:hi] / cfg.temperature, dim=-1)
        p, _ = probs.sort(dim=-1, descending=True)
        sizes += ((p.cumsum(-1) - p) < cfg.top_p).sum(-1).tolist()
    return sizes


def step_ms(speech, request, reps: int, **engine) -> float:
    """Median milliseconds of one decode step 100 tokens past the prompt, for a StaticDecoder built with ``engine``."""
    from spade_tts.decoding import StaticDecoder

    ids = torch.tensor([request.prompt])
    dec = StaticDecoder(speech.lm, 1, ids.shape[1] + 200 + reps + 2, head_rows=speech.layout.head_rows(), **engine)
    dec.prefill(ids, torch.ones_like(ids))
    token = torch.tensor([int(speech.layout.head_rows()[-1])])
    for _ in range(100):
        dec.step(token)
    return _timed(lambda: dec.step(token), reps, torch.device("cpu"))


def shape_steps(speech, request, shapes: list[str], reps: int) -> dict:
    """Median step milliseconds of random-initialised LMs of each ``LxHxF`` shape (two rounds in turn, the lower kept)."""
    from transformers import LlamaForCausalLM

    trained, base, best = speech.lm, speech.lm.config, {}
    try:
        for _ in range(2):
            for shape in shapes:
                layers, hidden, ffn = (int(x) for x in shape.split("x"))
                torch.manual_seed(0)
                speech.lm = LlamaForCausalLM(type(base)(**{**base.to_dict(), "num_hidden_layers": layers,
                                                           "hidden_size": hidden, "intermediate_size": ffn,
                                                           "num_attention_heads": hidden // 64, "head_dim": 64,
                                                           "num_key_value_heads": 1})).eval()
                ms = step_ms(speech, request, reps)
                params = sum(p.numel() for p in speech.lm.parameters())
                best[shape] = {"step_ms": min(ms, best.get(shape, {}).get("step_ms", ms)), "params": params}
    finally:
        speech.lm = trained
    return best


def main() -> None:
    from spade_tts.families.base import DECODERS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--prompts", type=int, default=4, help="held-out prompts (one per voice, in the eval's order)")
    ap.add_argument("--corpus", default=str(ROOT / "data" / "corpus"))
    ap.add_argument("--model", default="", help="a builtin-family folder (default: the shipped model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=200, help="steps per engine timing")
    ap.add_argument("--decoder", default="static", choices=DECODERS,
                    help="the loop's engine (spade's decoder names; default: float32)")
    ap.add_argument("--temperature", type=float, default=None, help="the loop's temperature (default: the model's own)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd steps (static shapes; any length)")
    ap.add_argument("--shapes", default="", help="also time LMs of these shapes, LAYERSxHIDDENxFFN,... (random weights)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "generation_anatomy_cpu.json"))
    args = ap.parse_args()
    args.requests_from = ""

    from spade_tts.evaluation.evaluate import machine_info
    from spade_tts.families.registry import load_speech_lm
    from spade_tts.io import write_json

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    speech = load_speech_lm(args.model or None)
    requests, info = load_requests(speech, args)
    cfg = speech.generation_config(seed=args.seed, decoder=args.decoder, temperature=args.temperature)
    tps = speech.codec.config.tokens_per_second

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop_anatomy(speech, requests[:1], cfg)  # warm-up
        tot, seen = loop_anatomy(speech, requests, cfg)
        replay_s, same = replay_rule(speech, requests, cfg, seen)
    sizes = torch.tensor(nucleus_sizes(speech, requests, cfg, seen), dtype=torch.float)
    audio_s = tot["speech_tokens"] / tps
    n = tot["steps"]
    loop = {"prefill_ms_per_item": 1e3 * tot["prefill_s"] / len(requests),
            "step_ms": 1e3 * tot["step_s"] / max(1, n - len(requests)),
            "choose_ms": 1e3 * tot["choose_s"] / n, "choose_replayed_ms": 1e3 * replay_s / n,
            "replay_same_tokens": same,
            "other_ms_per_token": 1e3 * (tot["loop_s"] - tot["prefill_s"] - tot["step_s"] - tot["choose_s"]) / n,
            "tokens": n, "tokens_per_audio_second": n / audio_s, "audio_seconds": audio_s,
            "lm_rtf": tot["loop_s"] / audio_s, "tokens_per_second": n / tot["loop_s"],
            "nucleus_codes": {"median": float(sizes.median()), "p90": float(sizes.quantile(0.9)),
                              "over_32": float((sizes > 32).float().mean())}}
    engines = {"static": {}, "static, fused q/k/v and gate/up": {"fuse_projections": True},
               "static-int8": {"int8_weights": True}}
    if args.compile:
        engines["static, compiled (inductor, static shapes)"] = {"compile": True}
        engines["static-compiled (any length)"] = {"compile_any_length": True}
        engines["static-int8-compiled (any length)"] = {"int8_weights": True, "compile_any_length": True}
    steps = {}
    for name, kw in engines.items():
        t = time.perf_counter()
        ms = step_ms(speech, requests[0], args.reps, **kw)
        steps[name] = {"step_ms": ms, "setup_and_timing_s": time.perf_counter() - t}

    shapes = shape_steps(speech, requests[0], args.shapes.split(","), args.reps) if args.shapes else {}
    rest_ms = 1e3 * (tot["loop_s"] - tot["step_s"]) / n  # the rule, prefill and bookkeeping per token
    for row in shapes.values():
        row["lm_rtf_projected"] = (row["step_ms"] + rest_ms) * loop["tokens_per_audio_second"] / 1e3

    threads, cpu = torch.get_num_threads(), machine_info("cpu")["cpu"]
    print(f"\n{len(requests)} held-out prompts, batch 1, {threads} threads, {cpu}")
    print("\n| part of the loop | per token | share |\n|---|---|---|")
    per_tok = 1e3 * tot["loop_s"] / n
    for label, ms in (("decode step (engine)", 1e3 * tot["step_s"] / n), ("rule's choice", loop["choose_ms"]),
                      ("prefill (per item, spread over its tokens)", 1e3 * tot["prefill_s"] / n),
                      ("loop bookkeeping", loop["other_ms_per_token"])):
        print(f"| {label} | {ms:.3f} ms | {100 * ms / per_tok:.0f} % |")
    print(f"| **all** | **{per_tok:.3f} ms** ({loop['tokens_per_second']:.0f} tokens/s, "
          f"{loop['tokens_per_audio_second']:.1f} per audio second) | LM RTF **{loop['lm_rtf']:.3f}** |")
    print(f"\nthe rule on the same logits without decode steps between: {loop['choose_replayed_ms']:.3f} ms a choice "
          f"({loop['choose_ms'] / loop['choose_replayed_ms']:.2f}x less than in the loop; same tokens: {same})")
    nuc = loop["nucleus_codes"]
    print(f"nucleus (temperature {cfg.temperature:g}, top-p {cfg.top_p:g}): median {nuc['median']:.0f} codes, "
          f"90th percentile {nuc['p90']:.0f}, {100 * nuc['over_32']:.0f} % of choices over 32")
    print("\n| engine | step | vs static |\n|---|---|---|")
    for name, row in steps.items():
        print(f"| {name} | {row['step_ms']:.3f} ms | {steps['static']['step_ms'] / row['step_ms']:.2f}x |")
    if shapes:
        print(f"\n| shape (layers x hidden x ffn) | parameters | step | projected LM RTF |\n|---|---|---|---|")
        for shape, row in shapes.items():
            print(f"| {shape} | {row['params'] / 1e6:.1f} M | {row['step_ms']:.3f} ms | {row['lm_rtf_projected']:.3f} |")
    write_json(args.json, {"command": "python3 " + " ".join(sys.argv), "machine": machine_info("cpu"),
                           "model": str(speech.path), "items": [i["id"] for i in info],
                           "decoder": cfg.decoder, "temperature": cfg.temperature, "loop": loop, "engines": steps,
                           "shapes": shapes})
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
