"""Synthesis, timing and peak memory of one model: the part of `spade eval` that must run clean.

By default (``EvalConfig.isolate``) this runs in a fresh Python process per model
(``python -m spade_tts.evaluation.measure JOB.json``), so that every model is timed and its
memory measured under the same conditions: only the TTS model is loaded, nothing left over
from the previous model or from the ASR, speaker and DNSMOS scorers. The parent process then
scores the saved wavs. ``isolate=false`` runs the same function in-process (quicker start,
but CPU peak RSS then also counts whatever the process held before).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm


def synthesize_and_time(cfg, spec, items: list[dict], wav_names: dict[str, str], out: Path,
                        prompts: list[np.ndarray] | None = None) -> dict:
    """Warm-up, one synthesis pass over ``items`` (wavs saved), extra timed passes; sizes and peak memory.

    Returns ``{"rows", "passes", "lm_measured", "peak_mem_bytes", "peak_mem_kind", "mem_baseline_bytes",
    "params", "layers", "family", "sample_rate"}``; ``passes`` holds per timed pass and item
    ``[lm seconds, end-to-end seconds, audio seconds, speech tokens]``.
    """
    from spade_tts.audio import load_audio, save_wav
    from spade_tts.evaluation.evaluate import generation_config
    from spade_tts.evaluation.memory import PeakMemory
    from spade_tts.evaluation.models import load_model

    if prompts is None:
        prompts = [load_audio(it["prompt_wav"]) for it in items]
    n_rtf = len(items) if cfg.rtf_items <= 0 else min(cfg.rtf_items, len(items))
    runs = max(1, cfg.rtf_runs)
    bar = tqdm(total=max(0, cfg.warmup) + len(items) + (runs - 1) * n_rtf, desc=f"synthesize {spec.label}", unit="synth")
    mem = PeakMemory(cfg.device)
    mem.start()
    model = load_model(spec, cfg.device, cfg.family, cfg.family_config)
    settings = generation_config(cfg, model.speech)
    wav_dir = out / "wav"
    rows: list[dict] = []
    passes: list[list[list[float]]] = []

    def run(i: int):
        it = items[i]
        mem.sync()
        t = time.perf_counter()
        res = model.synthesize(it["target_text"], prompts[i], it["prompt_text"], settings)
        mem.sync()
        return res, res.lm_seconds, time.perf_counter() - t

    bar.set_postfix_str("warm-up")
    for _ in range(max(0, cfg.warmup)):
        run(0)
        bar.update()
    bar.set_postfix_str("synthesis")
    first = []
    for i, it in enumerate(items):
        res, lm_s, e2e_s = run(i)
        seconds = len(res.audio) / model.sample_rate
        wav = wav_dir / wav_names[it["id"]]
        save_wav(wav, res.audio, model.sample_rate)
        rows.append({"id": it["id"], "speaker": it.get("speaker"), "prompt_id": it.get("prompt_id"),
                     "prompt_text": it["prompt_text"], "prompt_wav": it["prompt_wav"], "text": it["target_text"],
                     "wav": str(wav.resolve()), "seconds": round(seconds, 4),
                     "reference_seconds": it.get("reference_seconds"), "tokens": res.tokens,
                     "lm_seconds": round(lm_s, 5), "e2e_seconds": round(e2e_s, 5),
                     "guard_hits": res.guard_hits, "truncated": res.truncated})
        if res.extra.get("proposed") is not None:  # speculative decoding: what the draft achieved on this item
            from spade_tts.families.speculative import DRAFT_COUNTS

            rows[-1]["draft"] = {k: res.extra[k] for k in DRAFT_COUNTS}
        if i < n_rtf:
            first.append([lm_s, e2e_s, seconds, res.tokens])
        bar.update()
    passes.append(first)
    bar.set_postfix_str("timing")
    for _ in range(runs - 1):
        this = []
        for i in range(n_rtf):
            res, lm_s, e2e_s = run(i)
            this.append([lm_s, e2e_s, len(res.audio) / model.sample_rate, res.tokens])
            bar.update()
        passes.append(this)
    bar.close()
    return {"rows": rows, "passes": passes, "lm_measured": True,
            "peak_mem_bytes": mem.read(), "peak_mem_kind": mem.kind, "mem_baseline_bytes": mem.baseline,
            "params": model.params(), "layers": model.layers(), "family": model.family,
            "sample_rate": model.sample_rate, "pid": os.getpid()}


def run_isolated(cfg, spec, items: list[dict], wav_names: dict[str, str], out: Path) -> dict:
    """``synthesize_and_time`` in a fresh ``python -m spade_tts.evaluation.measure`` process."""
    from dataclasses import asdict

    from spade_tts.io import write_json

    out.mkdir(parents=True, exist_ok=True)
    job, result, error = out / "measure_job.json", out / "measure_result.json", out / "measure_error.json"
    for f in (result, error):
        f.unlink(missing_ok=True)
    write_json(job, {"cfg": asdict(cfg), "spec": {"label": spec.label, "path": spec.path}, "items": items,
                      "wav_names": wav_names, "out": str(out)})
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "spade_tts.evaluation.measure", str(job)])
    if error.is_file():
        err = json.loads(error.read_text())
        raise (ValueError if err.get("user_error") else RuntimeError)(f"{spec.label}: {err['message']}")
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"{spec.label}: the measuring process exited with status {proc.returncode} "
                           f"(see its output above); rerun with isolate=false to debug in-process")
    data = json.loads(result.read_text())
    job.unlink(missing_ok=True)
    result.unlink(missing_ok=True)
    return data


def exit_with_parent(poll_seconds: float = 1.0) -> None:
    """Stop this process when the one that started it is gone: a `spade eval` killed by a signal it cannot catch
    (``kill``; Ctrl-C reaches the whole process group anyway) would otherwise leave its measuring child running
    unseen, competing for the cores with whatever runs next."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(argv: list[str]) -> int:
    from spade_tts.evaluation.evaluate import EvalConfig
    from spade_tts.evaluation.models import ModelSpec
    from spade_tts.io import write_json

    exit_with_parent()
    job = json.loads(Path(argv[0]).read_text())
    out = Path(job["out"])
    try:
        cfg = EvalConfig(**job["cfg"])
        data = synthesize_and_time(cfg, ModelSpec(**job["spec"]), job["items"], job["wav_names"], out)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # reported to the parent as one line
        write_json(out / "measure_error.json", {"message": str(e) or type(e).__name__, "type": type(e).__name__,
                                                 "user_error": isinstance(e, (ValueError, FileNotFoundError))})
        return 2
    write_json(out / "measure_result.json", data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
