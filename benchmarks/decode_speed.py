"""Decode speed: HF generate, the synth.py-style HF loop, StaticDecoder (eager, CUDA graphs, compiled).

    python3 benchmarks/decode_speed.py                      # built-in model, CPU, float32, batch 1 and 8
    python3 benchmarks/decode_speed.py --device cuda --dtype bf16 --shape llasa-1b \
        --methods hf_generate,static_speech,static_graphs_full,static_graphs --compile --compile-batches 1
    python3 benchmarks/decode_speed.py ... --shape llasa-1b --layers 8   # the half-depth student's shape

``--shape`` picks the model: ``builtin`` (the committed reference weights) or the LM of a real
family built from its published config with random weights (no checkpoint can be fetched
offline; decode speed does not depend on the weights' values): ``llasa-1b`` (Llama-3.2-1B
body, 16 x 2048, GQA 32/8, vocabulary 193,800 with the 65,536 X-codec2 tokens at the end) and
``cosyvoice2-lm`` (CosyVoice 2's Qwen2-0.5B body, 24 x 896, GQA 14/2, q/k/v biases, with the
6,564 speech rows after the 151,936 text ids plus sos/eos and task id, as spade's unified view
lays them out); ``builtin-mqa`` is the built-in shape with one key/value head (the next
reference attempt, ``recipes/reference-attempt2.yaml``). ``--layers N`` keeps the first N layers (a pruned student's speed; which layers
are kept does not change it).

Greedy, fixed length (``--new-tokens``, default 300) after a prompt of ``--prompt-len`` tokens
(default 300; batch rows are left-padded to lengths spread over the last 15 %, as synth.py's
batches are). Each method runs once short as warm-up, then ``--repeats`` times (default 3);
tokens/s = batch x new tokens / wall time of the whole call (prefill included), median of the
repeats, which run round-robin across methods; tokens per CPU-second (process CPU time) is
reported too, as it is less sensitive to other jobs on a shared machine. Methods:

  hf_generate     model.generate(do_sample=False), eager attention as loaded (sdpa)
  hf_loop         HF forward + DynamicCache, one token per call, as the shared decode loop does with decoder=hf
  static_full     spade_tts.decoding.StaticDecoder, full output head
  static_speech   StaticDecoder with the head trimmed to the control tokens 0..5 and the speech
                  tokens 48..4143 (what a speech step can emit apart from phones)
  static_graphs_full  StaticDecoder(cuda_graphs=True), full head (CUDA only)
  static_graphs   StaticDecoder(cuda_graphs=True), trimmed head (CUDA only)
  static_fused    static_speech with fuse_projections=True (one q/k/v and one gate/up matmul per layer)
  static_graphs_fused  static_graphs with fuse_projections=True (CUDA only)
  static_int8     static_speech with int8_weights=True: int8 weight copies with bf16 activations in
                  the decode step's matmuls (CPU only, lossy: "same tokens" reports its greedy agreement)
  static_int8_fused  static_int8 with fuse_projections=True
  static_compiled StaticDecoder(compile=True), torch's reduce-overhead CUDA graphs, trimmed head
  static_compiled_graphs  StaticDecoder(compile=True, cuda_graphs=True): inductor-fused step in
                  our own graph, trimmed head; with --compile on CUDA (CPU: static_compiled);
                  --fuse adds fuse_projections
  static_compiled_int8  StaticDecoder(compile=True, int8_weights=True), trimmed head (CPU only)
  static_compiled_int8_fused  the same with fuse_projections=True

The prompt is random speech tokens after <bos> (seeded): decode speed does not depend on content.
The JSON (``--json``) names the machine; on a shared machine, pass ``--threads`` to pin torch's
thread count and read the load average it records. ``--threads 1,2`` times every method at each
count in the same run (the best count differs: HF ``generate`` is fastest on one thread here,
the int8 paths on two); the last table compares each method at its best count.
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
# published configs of the families' LMs (the fields that set the compute); speech rows = what a speech step may emit
SHAPES = {
    "llasa-1b": dict(cls="llama", description="LLaSA-1B LM (Llama-3.2-1B body, 16 x 2048, GQA 32/8, vocab 193,800)",
                     config=dict(vocab_size=193800, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                 num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
                                 max_position_embeddings=131072, tie_word_embeddings=True,
                                 rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0,
                                                      low_freq_factor=1.0, high_freq_factor=4.0,
                                                      original_max_position_embeddings=8192)),
                     speech_rows=(128256, 193800), prompt_ids=(128264, 193800),  # 8 specials + 65,536 codes
                     audio_tokens_per_s=50.0),  # X-codec2
    "cosyvoice2-lm": dict(cls="qwen2", description="CosyVoice 2 LM (Qwen2-0.5B body, 24 x 896, GQA 14/2, "
                                                   "vocab 151,936 + 2 + 6,564 speech rows)",
                          config=dict(vocab_size=151936 + 2 + 6564, hidden_size=896, intermediate_size=4864,
                                      num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                      rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=False,
                                      rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
                          speech_rows=(151938, 158502), prompt_ids=(151938, 158499),
                          audio_tokens_per_s=25.0),  # speech_tokenizer_v2
    # recipes/reference-attempt2.yaml: the built-in model's shape with one key/value head (multi-query)
    "builtin-mqa": dict(cls="llama", description="built-in shape, multi-query (12 x 320, 5 query heads / 1 KV head, "
                                                 "vocab 4144)",
                        config=dict(vocab_size=4144, hidden_size=320, intermediate_size=864, num_hidden_layers=12,
                                    num_attention_heads=5, num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-6,
                                    max_position_embeddings=2048, tie_word_embeddings=True),
                        speech_rows=(5, 4144), prompt_ids=(SPEECH_OFFSET, 4144), audio_tokens_per_s=100.0),
}


TRIMMED = ("static_speech", "static_graphs", "static_fused", "static_graphs_fused", "static_compiled",
           "static_compiled_graphs", "static_int8", "static_int8_fused", "static_compiled_int8",
           "static_compiled_int8_fused")


def build_model(shape: str, layers: int, dtype, device):
    """(model, speech rows, prompt id range, description): the built-in weights or a random-weight family LM."""
    if shape == "builtin":
        from transformers import LlamaForCausalLM
        model = LlamaForCausalLM.from_pretrained(MODEL_DIR, dtype=dtype).to(device).eval()
        vocab = model.config.vocab_size
        desc = "built-in reference (LlamaForCausalLM, 12 x 320, vocab 4144)"
        rows, prompt_ids = list(range(CONTROL)) + list(range(SPEECH_OFFSET, vocab)), (SPEECH_OFFSET, vocab)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
        spec = SHAPES[shape]
        cfg_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[spec["cls"]]
        config = cfg_cls(**spec["config"])
        torch.manual_seed(0)
        with torch.device(device):  # initialised where it runs: a 1B model's CPU init alone takes a minute
            model = model_cls(config).to(dtype).eval()
        desc = spec["description"]
        rows, prompt_ids = slice(*spec["speech_rows"]), spec["prompt_ids"]
    if layers:
        if not 0 < layers <= model.config.num_hidden_layers:
            raise SystemExit(f"--layers {layers}: the model has {model.config.num_hidden_layers}")
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        desc += f", first {layers} layers kept"
    return model, rows, prompt_ids, desc


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_prompts(batch: int, length: int, id_range: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    ids = torch.zeros(batch, length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b in range(batch):
        n = length - (b * int(0.15 * length)) // max(1, batch - 1) if batch > 1 else length
        ids[b, length - n] = 1  # <bos>
        ids[b, length - n + 1:] = torch.randint(*id_range, (n - 1,), generator=g)
        mask[b, length - n:] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def hf_generate(model, ids, mask, n):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=0)
    return out[:, ids.shape[1]:]


@torch.no_grad()
def hf_loop(model, ids, mask, n):
    """HF forward with a growing DynamicCache, as spade_tts.families.generate runs it with decoder=hf."""
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


def static_runner(head_rows=None, **options):
    decoders: dict = {}

    def run(model, ids, mask, n):
        key = (ids.shape[0], ids.shape[1] + n, torch.get_num_threads())  # inductor's C++ bakes in the thread count
        if key not in decoders:  # built once per shape, like a server keeps one (and compiles once)
            decoders[key] = StaticDecoder(model, ids.shape[0], ids.shape[1] + n, head_rows=head_rows, **options)
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
    ap.add_argument("--threads", default="0", help="torch.set_num_threads, or a list (1,2) to time every method at "
                                                  "each; 0: leave torch's default")
    ap.add_argument("--methods", default="hf_generate,hf_loop,static_full,static_speech")
    ap.add_argument("--compile", action="store_true", help="also time StaticDecoder(compile=True)")
    ap.add_argument("--compile-batches", default="", help="time the compiled methods only at these batch sizes "
                    "(each batch size compiles anew; default: all)")
    ap.add_argument("--fuse", action="store_true", help="the compiled method fuses q/k/v and gate/up matmuls")
    ap.add_argument("--shape", choices=["builtin", *SHAPES], default="builtin")
    ap.add_argument("--layers", type=int, default=0, help="keep the first N layers (0: all)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "decode_speed_cpu.json"))
    args = ap.parse_args(argv)

    import transformers

    thread_counts = [int(t) for t in str(args.threads).split(",") if t] or [0]
    if thread_counts[0]:
        torch.set_num_threads(thread_counts[0])
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    model, speech_rows, prompt_ids, model_desc = build_model(args.shape, args.layers, dtype, device)
    audio_rate = SHAPES[args.shape]["audio_tokens_per_s"] if args.shape in SHAPES else 100.0
    vocab = model.config.vocab_size
    methods = {
        "hf_generate": hf_generate,
        "hf_loop": hf_loop,
        "static_full": static_runner(),
        "static_speech": static_runner(head_rows=speech_rows),
        "static_graphs_full": static_runner(cuda_graphs=True),
        "static_graphs": static_runner(head_rows=speech_rows, cuda_graphs=True),
        "static_fused": static_runner(head_rows=speech_rows, fuse_projections=True),
        "static_graphs_fused": static_runner(head_rows=speech_rows, cuda_graphs=True, fuse_projections=True),
        "static_int8": static_runner(head_rows=speech_rows, int8_weights=True),
        "static_int8_fused": static_runner(head_rows=speech_rows, int8_weights=True, fuse_projections=True),
        "static_compiled_int8": static_runner(head_rows=speech_rows, int8_weights=True, compile=True),
        "static_compiled_int8_fused": static_runner(head_rows=speech_rows, int8_weights=True, compile=True,
                                                    fuse_projections=True),
    }
    chosen = [m for m in args.methods.split(",") if m]
    compiled = None
    if args.compile:
        graphs = device.type == "cuda"
        compiled = "static_compiled_graphs" if graphs else "static_compiled"
        methods[compiled] = static_runner(head_rows=speech_rows, compile=True, cuda_graphs=graphs,
                                          fuse_projections=args.fuse)
        chosen.append(compiled)
    unknown = [m for m in chosen if m not in methods]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {sorted(methods)}")
    compile_batches = {int(b) for b in args.compile_batches.split(",") if b}

    machine = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_model(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "device": str(device), "dtype": args.dtype,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    n_rows = len(range(vocab)[speech_rows]) if isinstance(speech_rows, slice) else len(speech_rows)
    setup = {"model": model_desc, "shape": args.shape, "layers": model.config.num_hidden_layers,
             "parameters": sum(p.numel() for p in model.parameters()), "prompt_len": args.prompt_len,
             "new_tokens": args.new_tokens, "repeats": args.repeats, "greedy": True,
             "tokens_per_s": "batch * new_tokens / wall time of the whole call, prefill included; median of repeats",
             "tokens_per_cpu_s": "the same over the process CPU time of the call",
             "trimmed_head_rows": n_rows, "vocab_size": vocab, "audio_tokens_per_s": audio_rate,
             "rtf_lm": "audio tokens/s x wall seconds per new token of one row (batch x tokens/s per item)",
             "peak_mem_mib": "torch.cuda.max_memory_allocated over the method's warm-up and one full call"}
    results = []
    print(f"# {machine['device_name']} ({machine['platform']}, {machine['cpu_count']} CPUs, "
          f"{machine['torch_threads']} torch threads), torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {args.dtype}; {model_desc}; prompt {args.prompt_len}, {args.new_tokens} "
          f"new tokens, greedy", flush=True)
    for batch, threads in [(int(b), t) for b in args.batches.split(",") for t in thread_counts]:
        if threads:
            torch.set_num_threads(threads)
        ids, mask = make_prompts(batch, args.prompt_len, prompt_ids, device)
        here = [m for m in chosen if "compiled" not in m or not compile_batches or batch in compile_batches]
        peaks = {}
        for name in here:
            t0 = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            timed(methods[name], model, ids, mask, args.warmup_tokens, device)
            timed(methods[name], model, ids, mask, args.new_tokens, device)  # graphs are recorded per shape
            if device.type == "cuda":  # weights + this method's cache, activations and graph pool
                peaks[name] = torch.cuda.max_memory_allocated(device)
            print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        walls = {m: [] for m in here}
        cpus = {m: [] for m in here}
        toks = {}
        for _ in range(args.repeats):  # round robin, so that every method sees the same load
            for name in here:
                wall, cpu, toks[name] = timed(methods[name], model, ids, mask, args.new_tokens, device)
                walls[name].append(wall)
                cpus[name].append(cpu)
        # full-head methods are compared with the fixed-length HF loop (or HF generate, which differs after an
        # <eos>: min_new_tokens forbids it); trimmed-head ones with the first trimmed one (they cannot emit the
        # text tokens a random-weight full head picks)
        full_ref = "hf_loop" if "hf_loop" in here else here[0]
        trimmed_ref = next((m for m in here if m in TRIMMED), None)
        for name in here:
            ref_name = trimmed_ref if name in TRIMMED else full_ref
            med, med_cpu = statistics.median(walls[name]), statistics.median(cpus[name])
            same = float((toks[name] == toks[ref_name]).float().mean())
            row = {"batch": batch, "threads": torch.get_num_threads(), "method": name, "tokens_per_s": batch * args.new_tokens / med,
                   "ms_per_step": 1e3 * med / args.new_tokens,
                   "tokens_per_cpu_s": batch * args.new_tokens / med_cpu, "seconds": walls[name],
                   "cpu_seconds": cpus[name], "same_tokens_as": ref_name, "same_tokens_fraction": same,
                   # LM-only real-time factor of one item: decode seconds per second of the codec's audio
                   "rtf_lm": audio_rate * med / args.new_tokens,
                   "peak_mem_mib": round(peaks[name] / 2 ** 20, 1) if name in peaks else None}
            results.append(row)
            mem = f"  peak {row['peak_mem_mib']:.0f} MiB" if row["peak_mem_mib"] is not None else ""
            print(f"batch {batch:2d}  threads {row['threads']}  {name:16s} {row['tokens_per_s']:9.1f} tok/s  {row['ms_per_step']:7.2f} ms/step  "
                  f"RTF(LM) {row['rtf_lm']:.3f}  {row['tokens_per_cpu_s']:9.1f} tok/CPU-s{mem}  same tokens as "
                  f"{ref_name}: {100 * same:.1f} %", flush=True)
    machine["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    base = "hf_generate" if "hf_generate" in chosen else "hf_loop"

    def table(title, key, groups):
        print(f"\n{title}\n| batch | threads | " + " | ".join(chosen) + f" | fastest / {base} |")
        print("|---|---|" + "---|" * (len(chosen) + 1))
        for (batch, threads), rows in groups:
            cells = [f"{rows[m][key]:.1f}" + (f" ({rows[m]['threads']})" if threads == "best" else "")
                     if m in rows else "-" for m in chosen]
            best = max((r for m, r in rows.items() if m.startswith("static")), key=lambda r: r[key], default=None)
            ratio = f"{best[key] / rows[base][key]:.2f}x ({best['method']})" if best and base in rows else "-"
            print(f"| {batch} | {threads} | " + " | ".join(cells) + f" | {ratio} |")

    keys = sorted({(r["batch"], r["threads"]) for r in results})
    for key, title in (("tokens_per_s", "tokens/s (wall)"), ("tokens_per_cpu_s", "tokens per CPU-second")):
        table(title, key, [(k, {r["method"]: r for r in results if (r["batch"], r["threads"]) == k}) for k in keys])
    if len(thread_counts) > 1:  # every method at its own best thread count
        best_rows = []
        for batch in sorted({b for b, _ in keys}):
            rows = {}
            for r in results:
                if r["batch"] == batch and r["tokens_per_s"] > rows.get(r["method"], {"tokens_per_s": 0})["tokens_per_s"]:
                    rows[r["method"]] = r
            best_rows.append(((batch, "best"), rows))
        table("tokens/s (wall), each method at its best thread count", "tokens_per_s", best_rows)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "setup": setup, "results": results,
                               "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
