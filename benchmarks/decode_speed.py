"""Decode speed of the built-in reference LM: HF generate, the synth.py-style HF loop, StaticDecoder.

    python3 benchmarks/decode_speed.py                      # CPU, float32, batch 1 and 8
    python3 benchmarks/decode_speed.py --device cuda --dtype bf16 --compile

Greedy, fixed length (``--new-tokens``, default 300) after a prompt of ``--prompt-len`` tokens
(default 300; batch rows are left-padded to lengths spread over the last 15 %, as synth.py's
batches are). Each method runs once short as warm-up, then ``--repeats`` times (default 3);
tokens/s = batch x new tokens / wall time of the whole call (prefill included), median of the
repeats, which run round-robin across methods; tokens per CPU-second (process CPU time) is
reported too, as it is less sensitive to other jobs on a shared machine. Methods:

  hf_generate     model.generate(do_sample=False), eager attention as loaded (sdpa)
  hf_loop         HF forward + DynamicCache, one token per call, as spade_tts.reference.synth does
  static_full     spade_tts.decoding.StaticDecoder, full output head
  static_speech   StaticDecoder with the head trimmed to the control tokens 0..5 and the speech
                  tokens 48..4143 (what a speech step can emit apart from phones)
  static_compiled StaticDecoder(compile=True), only with --compile (meant for CUDA graphs)

The prompt is random speech tokens after <bos> (seeded): decode speed does not depend on content.
The JSON (``--json``) names the machine; on a shared machine, pass ``--threads`` to pin torch's
thread count (the CPU table in docs/decoding.md used ``--threads 1``) and read the load average
it records.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spade_tts.decoding import StaticDecoder  # noqa: E402
from spade_tts.hf_compat import cache_kwargs, output_cache  # noqa: E402

MODEL_DIR = ROOT / "spade_tts" / "assets" / "reference"
SPEECH_OFFSET = 48
CONTROL = 6  # ids 0..5: pad, bos, ..., speech_end/eos
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_prompts(batch: int, length: int, vocab: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    ids = torch.zeros(batch, length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b in range(batch):
        n = length - (b * int(0.15 * length)) // max(1, batch - 1) if batch > 1 else length
        ids[b, length - n] = 1  # <bos>
        ids[b, length - n + 1:] = torch.randint(SPEECH_OFFSET, vocab, (n - 1,), generator=g)
        mask[b, length - n:] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def hf_generate(model, ids, mask, n):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=0)
    return out[:, ids.shape[1]:]


@torch.no_grad()
def hf_loop(model, ids, mask, n):
    """HF forward with a growing DynamicCache, as spade_tts.reference.synth.generate_codes runs it."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past, toks = output_cache(out), []
    for i in range(n):
        nxt = out.logits[:, -1].argmax(-1)
        toks.append(nxt)
        if i + 1 == n:
            break
        mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=mask.device)], dim=1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                    use_cache=True, **cache_kwargs(model, past))
        past = output_cache(out)
    return torch.stack(toks, 1)


def static_runner(head_rows=None, compile=False):
    decoders: dict = {}

    def run(model, ids, mask, n):
        key = (ids.shape[0], ids.shape[1] + n)
        if key not in decoders:  # built once per shape, like a server keeps one (and compiles once)
            decoders[key] = StaticDecoder(model, ids.shape[0], ids.shape[1] + n, head_rows=head_rows, compile=compile)
        dec = decoders[key]
        logits, toks = dec.prefill(ids, mask), []
        for i in range(n):
            nxt = dec.token_ids(logits.argmax(-1))
            toks.append(nxt)
            if i + 1 < n:
                logits = dec.step(nxt)
        return torch.stack(toks, 1)
    return run


def timed(fn, model, ids, mask, n, device):
    """(wall seconds, process CPU seconds, tokens) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    toks = fn(model, ids, mask, n)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, toks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--prompt-len", type=int, default=300)
    ap.add_argument("--new-tokens", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--methods", default="hf_generate,hf_loop,static_full,static_speech")
    ap.add_argument("--compile", action="store_true", help="also time StaticDecoder(compile=True)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "decode_speed_cpu.json"))
    args = ap.parse_args(argv)

    from transformers import LlamaForCausalLM
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    model = LlamaForCausalLM.from_pretrained(MODEL_DIR, dtype=dtype).to(device).eval()
    vocab = model.config.vocab_size
    speech_rows = list(range(CONTROL)) + list(range(SPEECH_OFFSET, vocab))
    methods = {
        "hf_generate": hf_generate,
        "hf_loop": hf_loop,
        "static_full": static_runner(),
        "static_speech": static_runner(head_rows=speech_rows),
    }
    chosen = [m for m in args.methods.split(",") if m]
    if args.compile:
        methods["static_compiled"] = static_runner(compile=True)
        chosen.append("static_compiled")

    machine = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_model(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "device": str(device), "dtype": args.dtype,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    setup = {"model": "built-in reference (LlamaForCausalLM, 12 x 320, vocab 4144)", "prompt_len": args.prompt_len,
             "new_tokens": args.new_tokens, "repeats": args.repeats, "greedy": True,
             "tokens_per_s": "batch * new_tokens / wall time of the whole call, prefill included; median of repeats",
             "tokens_per_cpu_s": "the same over the process CPU time of the call",
             "static_speech_rows": f"0..{CONTROL - 1} and {SPEECH_OFFSET}..{vocab - 1} ({len(speech_rows)} rows)"}
    results = []
    print(f"# {machine['device_name']} ({machine['platform']}, {machine['cpu_count']} CPUs, "
          f"{machine['torch_threads']} torch threads), torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {args.dtype}; prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy")
    for batch in [int(b) for b in args.batches.split(",")]:
        ids, mask = make_prompts(batch, args.prompt_len, vocab, device)
        for name in chosen:
            timed(methods[name], model, ids, mask, args.warmup_tokens, device)
            if name == "static_compiled":  # the CUDA graphs are recorded for this decoder's shape
                timed(methods[name], model, ids, mask, args.new_tokens, device)
        walls = {m: [] for m in chosen}
        cpus = {m: [] for m in chosen}
        toks = {}
        for _ in range(args.repeats):  # round robin, so that every method sees the same load
            for name in chosen:
                wall, cpu, toks[name] = timed(methods[name], model, ids, mask, args.new_tokens, device)
                walls[name].append(wall)
                cpus[name].append(cpu)
        # hf_generate differs after an <eos> (min_new_tokens forbids it), static_speech after a phone
        # token (it cannot emit one); the fixed-length HF loop is the reference for the others
        ref_name = "hf_loop" if "hf_loop" in chosen else chosen[0]
        for name in chosen:
            med, med_cpu = statistics.median(walls[name]), statistics.median(cpus[name])
            same = float((toks[name] == toks[ref_name]).float().mean())
            row = {"batch": batch, "method": name, "tokens_per_s": batch * args.new_tokens / med,
                   "ms_per_step": 1e3 * med / args.new_tokens,
                   "tokens_per_cpu_s": batch * args.new_tokens / med_cpu, "seconds": walls[name],
                   "cpu_seconds": cpus[name], "same_tokens_as": ref_name, "same_tokens_fraction": same}
            results.append(row)
            print(f"batch {batch:2d}  {name:16s} {row['tokens_per_s']:9.1f} tok/s  {row['ms_per_step']:7.2f} ms/step  "
                  f"{row['tokens_per_cpu_s']:9.1f} tok/CPU-s  same tokens as {ref_name}: {100 * same:.1f} %",
                  flush=True)
    machine["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    for key, title in (("tokens_per_s", "tokens/s (wall)"), ("tokens_per_cpu_s", "tokens per CPU-second")):
        print(f"\n{title}\n| batch | " + " | ".join(chosen) + " | static_speech / hf_loop |")
        print("|---|" + "---|" * (len(chosen) + 1))
        for batch in sorted({r["batch"] for r in results}):
            rows = {r["method"]: r for r in results if r["batch"] == batch}
            cells = [f"{rows[m][key]:.1f}" for m in chosen]
            ratio = (f"{rows['static_speech'][key] / rows['hf_loop'][key]:.2f}x"
                     if "static_speech" in rows and "hf_loop" in rows else "-")
            print(f"| {batch} | " + " | ".join(cells) + f" | {ratio} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "setup": setup, "results": results,
                               "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
