"""Speculative decoding on the built-in model: acceptance, tokens/s and speed-up against plain decoding.

    python3 benchmarks/speculative.py --threads 1                        # CPU: the table in docs/decoding.md
    python3 benchmarks/speculative.py --skips 2,4,6 --ks 1,2,3,4,5,6 --student runs/distill/final
    python3 benchmarks/speculative.py --skips 4 --ks 2,4 --accepts exact,groups=64,groups=256   # group-level
    python3 benchmarks/speculative.py --device cuda --requests-from benchmarks/results/speculative_cpu.json

For each draft (the model with its N least important layers by WLI skipped, N in ``--skips``, and
every ``--student`` checkpoint) and each k in ``--ks`` (tokens drafted per full-model forward), the
held-out prompts are spoken at batch 1 with the built-in family's own sampling (``spade eval``'s: the
model folder's temperature and top-p, 0.7 and 0.8 for the shipped model; attempt 1 ran at 1.0), plain
and speculative, through ``spade_tts.families.generate.generate``.
Reported per configuration: the share of drafted tokens the model accepted, tokens per full-model
forward (plain: 1), tokens/s of the decode loop (prefill included, summed over the prompts) and the
speed-up over plain decoding. Plain decoding is timed first and last (the two bracket the drift of a
shared machine). Sampled outputs of plain and speculative decoding differ (other random streams, same
distribution), so items differ in length; tokens/s is per token.

Each ``--accepts`` mode is a row of its own: ``exact`` (lossless) and ``groups=N`` (group-level
acceptance over N groups of alike speech tokens; the group sequence is the model's, the tokens within
a group the draft's, so not lossless): never pooled with the exact rows.

Which layers a skip draft drops comes from ``--scores`` (a ``spade score`` scores.json of this model;
the default is the 56-item WLI ranking committed with the docs, ``docs/builtin_scores_56.json``,
whose fingerprint matches the shipped model; no scores.json ships inside the model folder).

Component timings (``components`` in the JSON): one full-model step, one full-model ``extend`` of
n = 1..k+1 tokens (the verify forward) and one draft step, medians of ``--reps`` calls mid-sequence;
from them and each configuration's measured tokens and draft forwards per round the speed-up is
also *projected* (what the loop would give without its Python bookkeeping, or on another device).
On a GPU (``--device cuda``) the full-model step is a CUDA-graph replay and ``extend`` runs eagerly;
with ``--requests-from CPU.json`` it reuses the CPU run's prompts (no corpus, codec or phonemizer
needed there) and, with ``--no-e2e``, only times the components and projects from the CPU run's
acceptance.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_SCORES = ROOT / "docs" / "builtin_scores_56.json"


def load_requests(speech, args) -> tuple[list, list[dict]]:
    """Held-out prompts as generation requests (and what identifies them), from the corpus or a previous JSON."""
    from spade_tts.families.builtin import PhoneRequest

    if args.requests_from:
        saved = json.loads(Path(args.requests_from).read_text())["items"][: args.prompts]
        return [PhoneRequest(it["prompt"], target_phones=it["target_phones"], prompt_frames=it["prompt_frames"],
                             prompt_phones=it["prompt_phones"]) for it in saved], saved
    from spade_tts.audio import load_audio
    from spade_tts.evaluation.items import select_items

    items, _ = select_items("", "", args.corpus, 1, 4.0, args.seed, args.prompts)
    requests, info = [], []
    for it in items:
        codes = speech.encode_audio(load_audio(it["prompt_wav"]), 16000)
        req = speech.generation_request(it["target_text"], it["prompt_text"], codes)
        requests.append(req)
        info.append({"id": it["id"], "text": it["target_text"], "prompt": req.prompt,
                     "target_phones": req.target_phones, "prompt_frames": req.prompt_frames,
                     "prompt_phones": req.prompt_phones})
    return requests, info


def run_config(speech, requests, cfg) -> dict:
    """Every request at batch 1 through the shared loop: decode-loop seconds, tokens, the draft's counts."""
    from spade_tts.families.generate import generate
    from spade_tts.families.speculative import draft_summary

    out = {"seconds": 0.0, "tokens": 0, "proposed": 0, "accepted": 0, "target_forwards": 0, "draft_forwards": 0}
    for i, req in enumerate(requests):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (gen,), stats = generate(speech, [req], cfg, [i])
        out["seconds"] += stats.lm_seconds
        out["tokens"] += len(gen.ids)
        for key in ("proposed", "accepted", "target_forwards", "draft_forwards"):
            out[key] += stats.extra.get(key, 0)
    out["tokens_per_second"] = out["tokens"] / out["seconds"]
    if out["proposed"]:
        rounds = out["target_forwards"] - len(requests)  # one prefill per item
        out.update(draft_summary(out), tokens_per_round=out["tokens"] / rounds,
                   draft_forwards_per_round=(out["draft_forwards"] - len(requests)) / rounds)
    return out


def _timed(fn, reps: int, device) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` calls (after two untimed ones)."""
    times = []
    for i in range(reps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def components(speech, request, drafts: dict, kmax: int, reps: int) -> dict:
    """Milliseconds of a full-model step, of extend(n) for n = 1..kmax+1, and of each draft's step."""
    from spade_tts.families.generate import decode_engine
    from spade_tts.pruning.layers import skip_layers

    device = next(speech.lm.parameters()).device
    rows = speech.layout.head_rows()
    ids = torch.tensor([request.prompt])
    max_len = ids.shape[1] + 200 + (reps + 2) * (kmax + 2)
    token = torch.tensor([int(rows[-1])], device=device)

    def engine(skip=None, lm=None):
        if skip is None:
            return decode_engine(lm or speech.lm, 1, max_len, rows)
        with skip_layers(speech.lm, skip):
            return decode_engine(speech.lm, 1, max_len, rows)

    target = engine()
    target.prefill(ids, torch.ones_like(ids))
    for _ in range(100):  # mid-sequence: attention reads a realistic cache
        target.step(token)
    out = {"step_ms": _timed(lambda: target.step(token), reps, device), "extend_ms": {}, "draft_step_ms": {}}
    for n in range(1, kmax + 2):
        feed = token.repeat(n)[None]

        def verify():
            target.extend(feed)
            target.rewind(n)
        out["extend_ms"][n] = _timed(verify, reps, device)
    for name, (skip, lm) in drafts.items():
        d = engine(skip, lm)
        d.prefill(ids, torch.ones_like(ids))
        for _ in range(100):
            d.step(token)
        out["draft_step_ms"][name] = _timed(lambda: d.step(token), reps, device)
    return out


def projected(row: dict, comp: dict, draft: str, k: int) -> float | None:
    """Speed-up the measured tokens and draft forwards per round give with the component timings alone."""
    if not row.get("tokens_per_round") or draft not in comp["draft_step_ms"]:
        return None
    round_ms = comp["extend_ms"][k + 1] + row["draft_forwards_per_round"] * comp["draft_step_ms"][draft]
    return row["tokens_per_round"] * comp["step_ms"] / round_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--prompts", type=int, default=3, help="held-out prompts (one per voice, in the eval's order)")
    ap.add_argument("--corpus", default=str(ROOT / "data" / "corpus"))
    ap.add_argument("--requests-from", default="", help="reuse the prompts of an earlier run's JSON")
    ap.add_argument("--skips", default="2,4,6", help="skip drafts: numbers of least important layers to skip")
    ap.add_argument("--student", action="append", default=[], help="a student checkpoint as a draft (repeatable)")
    ap.add_argument("--ks", default="1,2,3,4,5,6", help="tokens drafted per full-model forward")
    ap.add_argument("--accepts", default="exact", help="acceptance modes: exact (lossless), groups=N (not lossless)")
    ap.add_argument("--scores", default=str(DEFAULT_SCORES), help="scores.json (WLI) of the built-in model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=20.0, help="length guard per item (spade eval's)")
    ap.add_argument("--reps", type=int, default=30, help="calls per component timing")
    ap.add_argument("--no-e2e", action="store_true", help="component timings only (projections from --requests-from)")
    ap.add_argument("--json", default="", help="default: benchmarks/results/speculative_<device>.json")
    args = ap.parse_args()

    from spade_tts.evaluation.evaluate import machine_info
    from spade_tts.families.registry import load_speech_lm
    from spade_tts.families.speculative import parse_accept, skipped_layers
    from spade_tts.pruning.layers import model_fingerprint

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    speech = load_speech_lm(None, device=args.device)
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    accepts = [a.strip() for a in args.accepts.split(",") if a.strip()]
    for a in accepts:
        parse_accept(a)
    base = speech.generation_defaults(max_seconds=args.max_seconds, seed=args.seed)  # what `spade eval` samples with
    drafts = {}  # name -> (skipped layers or None, student LM or None, draft setting)
    for n in [int(s) for s in args.skips.split(",") if s.strip()]:
        drafts[f"skip={n}"] = (skipped_layers(speech, "skip", n, args.scores), None, f"skip={n}")
    for path in args.student:
        from spade_tts.families.speculative import load_student

        drafts[f"student={path}"] = (None, load_student(speech, path), f"student={path}")
    requests, info = load_requests(speech, args)
    started = time.time()
    print(f"{len(requests)} prompts; drafts: " + ", ".join(f"{k} {v[0] or ''}" for k, v in drafts.items()), flush=True)

    comp = components(speech, requests[0], {k: v[:2] for k, v in drafts.items()}, max(ks), args.reps)
    print(f"components (ms): step {comp['step_ms']:.2f}, extend "
          + ", ".join(f"{n}: {ms:.2f}" for n, ms in comp["extend_ms"].items())
          + "; draft step " + ", ".join(f"{k}: {ms:.2f}" for k, ms in comp["draft_step_ms"].items()), flush=True)

    plain, rows = [], []
    if not args.no_e2e:
        import dataclasses

        run_config(speech, requests[:1], dataclasses.replace(base, max_seconds=0.5))  # warm-up
        plain.append(run_config(speech, requests, base))
        print(f"plain: {plain[0]['tokens_per_second']:.1f} tok/s ({plain[0]['tokens']} tokens)", flush=True)
        for name, (skip, _, setting) in drafts.items():
            for accept, k in [(a, k) for a in accepts for k in ks]:
                cfg = dataclasses.replace(base, draft=setting, draft_tokens=k, draft_scores=args.scores,
                                          draft_accept=accept)
                row = {"draft": name, "skipped": skip, "k": k, "accept": accept, **run_config(speech, requests, cfg)}
                rows.append(row)
                print(f"{name} k={k} {accept}: accepted {100 * row['acceptance_rate']:.1f} %, "
                      f"{row['tokens_per_forward']:.2f} tok/forward, {row['tokens_per_second']:.1f} tok/s", flush=True)
        plain.append(run_config(speech, requests, base))
        plain_tps = statistics.mean(p["tokens_per_second"] for p in plain)
        for row in rows:
            row["speedup"] = row["tokens_per_second"] / plain_tps
    elif args.requests_from:  # acceptance from the earlier run, timings from this device
        rows = [{**{key: r[key] for key in ("draft", "skipped", "k", "acceptance_rate", "tokens_per_forward",
                                            "tokens_per_round", "draft_forwards_per_round")},
                 "accept": r.get("accept", "exact")}
                for r in json.loads(Path(args.requests_from).read_text())["configs"]
                if r["draft"] in drafts and r["k"] in ks and r.get("accept", "exact") in accepts]
    for row in rows:
        row["projected_speedup"] = projected(row, comp, row["draft"], row["k"])

    print(f"\n{'draft':<10} {'k':>2} {'accept':<10} {'accepted %':>10} {'tok/forward':>11} {'tok/s':>7} {'speed-up':>8} "
          f"{'projected':>9}")
    if plain:
        print(f"{'plain':<10} {'-':>2} {'-':<10} {'-':>10} {1.0:>11.2f} {plain_tps:>7.1f} {1.0:>8.2f} {1.0:>9.2f}")
    for r in rows:
        tps, sp, pr = r.get("tokens_per_second"), r.get("speedup"), r.get("projected_speedup")
        print(f"{r['draft']:<10} {r['k']:>2} {r['accept']:<10} {100 * r['acceptance_rate']:>10.1f} {r['tokens_per_forward']:>11.2f} "
              f"{'-' if tps is None else f'{tps:.1f}':>7} {'-' if sp is None else f'{sp:.2f}x':>8} "
              f"{'-' if pr is None else f'{pr:.2f}x':>9}")

    data = {
        "format": "spade-speculative-bench/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python3 " + " ".join(sys.argv), "machine": machine_info(args.device),
        "load_average": os.getloadavg(), "model": "built-in", "fingerprint": model_fingerprint(speech.lm),
        "scores": str(Path(args.scores).resolve().relative_to(ROOT)) if Path(args.scores).resolve().is_relative_to(ROOT)
        else args.scores,
        "sampling": {"temperature": base.temperature, "top_p": base.top_p, "seed": base.seed,
                     "max_seconds": base.max_seconds, "batch": 1},
        "seconds": round(time.time() - started, 1), "components": comp,
        "plain": plain, "plain_tokens_per_second": plain_tps if plain else None, "configs": rows, "items": info,
    }
    out = Path(args.json or ROOT / "benchmarks" / "results" / f"speculative_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    items = data.pop("items")  # one line per item: the prompts are long lists of ids
    text = json.dumps(data, indent=1)[:-2] + ',\n "items": [\n' + ",\n".join("  " + json.dumps(it) for it in items)
    out.write_text(text + "\n ]\n}\n")
    print(f"wrote {out} ({data['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
