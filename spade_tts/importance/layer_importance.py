"""`spade score`: how much each decoder layer matters to the speech, by WER and by cheaper proxies.

For any family's checkpoint (the built-in model, LLaSA, Orpheus, CosyVoice 2, Spark-TTS, OuteTTS,
generic). WLI (SPADE's metric): skip layer i (its input passes straight to the next layer), speak
the evaluation items through the family's own generation rule and codec decoder, transcribe
them, and take the mean WER. A layer whose absence makes the model mumble is important. On the
same items, in the same run, the cheap proxies other pruning work uses (block influence, angular
distance, teacher-forced loss rise; ``spade_tts.importance.metrics``) are computed so that their
rankings can be compared with WLI's (Spearman) and with the WER of the model actually cut by each.

Items: the built-in held-out set (``corpus_dir``), a manifest of the user's data (``data=``), or
a Seed-TTS-eval list (``items_file=``); ``spade_tts.evaluation.items`` makes all three.

Every synthesis run (one skip set) is stored in ``out_dir/state.json`` as soon as it
finishes, written atomically, so a killed run resumes where it stopped and a finished one
is not redone; the state is tied to the model's fingerprint, the item list and the decoding.

Several processes (``accelerate launch --num_processes N -m spade_tts.importance ...``, one per
GPU) share the synthesis runs: each takes every N-th missing run, writes what it finishes to
its own ``state.rank<R>.json``, and all of them merge the files at the end of each batch of
runs. Runs do not depend on which process produced them (a run is one batch decoded by one
process; the built-in model's items also sample from their own seeded streams), so N
processes give the single process's scores.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spade_tts.importance.metrics import PROXY_METRICS
from spade_tts.io import write_json


@dataclass
class ScoreConfig:
    model: str = ""  # a checkpoint folder of any family; empty = the built-in model
    family: str = ""  # '' = detect from the folder
    family_config: str = ""  # the generic family's YAML when it is not next to the checkpoint
    data: str = ""  # JSONL manifest of your data (audio, text, speaker): items and teacher-forced sequences
    items_file: str = ""  # or a Seed-TTS-eval list id|prompt_text|prompt_wav|target_text (WLI; proxies need no list)
    corpus_dir: str = "data/corpus"  # the built-in held-out set, when neither data nor items_file is given
    items_per_speaker: int = 4  # items per speaker (held-out set: 7 aligned voices -> 28 items)
    max_items: int = 0  # keep only the first N items (0 = all)
    max_prompt_seconds: float = 4.0
    seed: int = 0  # item choice and sampling; the same seed for every layer, so runs differ only by the layer
    temperature: float | None = None  # None = the family's default (built-in model: its generation_config.json, 0.7)
    top_p: float | None = None  # None = the family's default (built-in model: 0.8)
    max_new_tokens: int | None = None  # length guard of token rules; None = the family's (OuteTTS 4096, else 1500)
    decoder: str = "static"  # static (HF forward where the LM is not a plain Llama/Qwen), static-int8 or hf
    batch_size: int = 32  # items decoded together; the items of one layer fit one batch by default
    tf_batch: int = 8  # sequences per teacher-forced forward
    wli: bool = True  # False: only the teacher-forced proxies (seconds instead of minutes)
    iterative: bool = False  # also remove layers one at a time, rescoring the rest after each removal
    iterative_metric: str = "wli"  # or tf_loss_rise (much cheaper)
    keep: int = 0  # depth at which kept sets are compared (and iterative mode stops); 0 = half
    compare: bool = True  # WER of the model cut to `keep` layers by each metric, without distillation
    out_dir: str = "runs/score"
    json: str = ""  # also copy the scores JSON here
    asr_model: str = ""  # empty = offline Whisper tiny.en; or a local faster-whisper / HF Whisper folder
    device: str = "cpu"
    dtype: str = "auto"
    # a skipped layer can make the model babble: cut an item at this many times the length its prompt's
    # speaking rate predicts (0 = only the 20 s guard); a cut item keeps its high WER, it just ends sooner
    max_length_ratio: float = 2.5
    overlap_asr: bool = True  # transcribe one run on a CPU thread while the next one is synthesized
    drop_finished: bool = True  # items that ended leave the decoding batch (same output, less work)
    bootstrap_resamples: int = 1000  # item resamples behind wli_stability (how much the ranking is luck)
    # each item's WER counts at most this much in WLI (0 = the plain mean): Whisper hallucinating on babble
    # gives single items WERs of 10-45 (1,000-4,500 %), which then decide the ranking (docs/layer-importance.md)
    item_wer_cap: float = 1.0


def generation_config(cfg: ScoreConfig, speech):
    """The family's defaults with the run's settings; the same for every skip set."""
    return speech.generation_config(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, decoder=cfg.decoder,
                                    max_new_tokens=cfg.max_new_tokens, max_length_ratio=cfg.max_length_ratio,
                                    drop_finished=cfg.drop_finished)


class ScoringRun:
    """Synthesis runs keyed by the set of skipped layers, cached on disk as they finish.

    With ``overlap_asr`` the runs form a two-stage pipeline: while Whisper transcribes run k on
    one CPU thread, the LM synthesizes run k + 1 on the others. Each run's items decode as one
    batch whose finished rows leave it, and every item samples from its own random stream, so a
    run's result does not depend on how it was batched or scheduled.
    """

    def __init__(self, cfg: ScoreConfig, speech, items: list[dict], fingerprint: str, asr, processes=None):
        self.cfg, self.speech, self.items, self.asr = cfg, speech, items, asr
        self.processes = processes  # accelerate's PartialState when launched as several processes, else None
        self.rank = processes.process_index if processes else 0
        self.world = processes.num_processes if processes else 1
        self.settings = generation_config(cfg, speech)
        self.path = Path(cfg.out_dir) / "state.json"
        # batch_size too: a token-sampling family draws one stream per batch, so its runs depend on the batching
        identity = {"model_fingerprint": fingerprint, "items": [(it["prompt_id"], it["id"]) for it in items],
                    "settings": asdict(self.settings), "batch_size": cfg.batch_size}
        self.state = {**identity, "runs": {}}
        if self.path.is_file():
            old = json.loads(self.path.read_text())
            if all(old.get(k) == json.loads(json.dumps(v)) for k, v in identity.items()):
                self.state = old
            else:
                print(f"note: {self.path} was made with another model, item set or decoding; starting afresh")
        self.identity = json.loads(json.dumps(identity))
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        self._merge_shards()  # runs other processes finished before a kill

    def shard(self, rank: int) -> Path:
        return self.path if rank == 0 else self.path.with_name(f"state.rank{rank}.json")

    def save(self) -> None:
        """This process's state file (process 0's is ``state.json``, which holds the merged runs)."""
        write_json(self.shard(self.rank), self.state)

    def _merge_shards(self) -> None:
        for path in sorted(self.path.parent.glob("state.rank*.json")) + [self.path]:
            if path.is_file() and path != self.shard(self.rank):
                other = json.loads(path.read_text())
                if all(other.get(k) == v for k, v in self.identity.items()):
                    for key, run in other.get("runs", {}).items():
                        self.state["runs"].setdefault(key, run)

    @staticmethod
    def key(skip: list[int]) -> str:
        return "skip:" + ",".join(map(str, sorted(skip)))

    def item_wers(self, skip: list[int]) -> np.ndarray:
        """Per-item WER of a finished run, capped at ``item_wer_cap`` (the quantity WLI averages)."""
        wers = np.array([r["wer"] for r in self.state["runs"][self.key(skip)]["per_item"]], dtype=float)
        return np.minimum(wers, self.cfg.item_wer_cap) if self.cfg.item_wer_cap > 0 else wers

    def wer(self, skip: list[int]) -> float:
        """Mean per-item (capped) WER with ``skip`` bypassed (cached)."""
        return self.wer_many([skip])[0]

    def wer_many(self, skips: list[list[int]], desc: str = "") -> list[float]:
        """Mean (capped) WER of each skip set, running the missing ones (transcription overlapped with synthesis).

        A run's stored ``wer`` is the plain mean, so changing the cap needs no new synthesis."""
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from spade_tts.audio import load_audio, to_mono_16k
        from spade_tts.pruning.layers import skip_layers
        from spade_tts.scoring import wer
        from spade_tts.synthesis import synthesize

        prompts = {}  # one array per prompt file: the family encodes each prompt once per run
        for it in self.items:
            prompts.setdefault(it["prompt_wav"], None)
        todo = list(dict.fromkeys(self.key(s) for s in skips if self.key(s) not in self.state["runs"]))
        mine = todo[self.rank::self.world]
        pending = []  # (key, skip, spoken, synthesis seconds, future of the transcripts)

        def finish(entry) -> None:
            key, skip, spoken, synth_seconds, future = entry
            rows = [{"id": it["id"], "wer": wer(it["target_text"], hyp), "transcript": hyp,
                     "seconds": len(res.audio) / res.sample_rate, "truncated": res.truncated}
                    for it, res, hyp in zip(self.items, spoken, future.result())]
            self.state["runs"][key] = {"skip": skip, "wer": float(np.mean([r["wer"] for r in rows])),
                                       "seconds": round(synth_seconds, 1),  # synthesis; Whisper overlaps the next run
                                       "per_item": rows}
            self.save()

        workers = 1 if self.cfg.overlap_asr else 0
        threads = torch.get_num_threads()
        if mine:
            prompts = {path: load_audio(path) for path in prompts}
        audios = [prompts[it["prompt_wav"]] for it in self.items]
        if workers and next(self.speech.lm.parameters()).device.type == "cpu":  # Whisper has a core of its own, the LM the rest
            torch.set_num_threads(max(1, threads - 1))  # (oversubscribed OpenMP threads spin)
        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for key in tqdm(mine, desc=desc or "synthesis runs", unit="run", disable=len(mine) < 2 or self.rank > 0):
                    skip = [int(x) for x in key[len("skip:"):].split(",") if x]
                    started = time.time()
                    with skip_layers(self.speech.lm, skip):
                        spoken = synthesize(self.speech, [it["target_text"] for it in self.items], audios,
                                            [it["prompt_text"] for it in self.items], self.settings,
                                            self.cfg.batch_size, progress=key if skip else "full")
                    future = pool.submit(self.asr.transcribe, [to_mono_16k(r.audio, r.sample_rate) for r in spoken])
                    pending.append((key, skip, spoken, time.time() - started, future))
                    if not workers:
                        finish(pending.pop())
                    while pending and (pending[0][-1].done() or len(pending) > 1):
                        finish(pending.pop(0))  # keep at most one transcription in flight
                for entry in pending:
                    finish(entry)
        finally:
            torch.set_num_threads(threads)
        if self.world > 1 and todo:
            self.processes.wait_for_everyone()
            self._merge_shards()
            if self.rank == 0:
                self.save()  # state.json now holds every process's runs
        return [float(self.item_wers(s).mean()) for s in skips]


def proxy_sequences(speech, cfg: ScoreConfig, items: list[dict]) -> list[tuple[list[int], int]]:
    """The teacher-forced sequences the proxies read: each item's recorded target with its prompt, laid out
    as the family trains on them; without items (``wli=false`` on a codes-only manifest) the manifest's
    utterances, each prompted by another of its speaker."""
    from spade_tts.families.data import family_sequences, load_utterances, utterance_of

    if not items:
        return family_sequences(speech, load_utterances(speech, cfg.data, cfg.max_items), seed=cfg.seed)[0]
    if any(it.get("reference_wav") is None for it in items):
        raise ValueError("the teacher-forced metrics need each item's recorded target: give the list file's fifth "
                         "field (reference wav), or use data=MANIFEST")
    seqs = []
    for it in items:
        target = utterance_of(speech, {"audio": it["reference_wav"], "text": it["target_text"],
                                       "speaker": it["speaker"] or "", "phones": it.get("target_phones"),
                                       **it.get("target_extra", {})})
        prompt = None
        if speech.uses_prompt:
            prompt = utterance_of(speech, {"audio": it["prompt_wav"], "text": it["prompt_text"],
                                           "speaker": it["speaker"] or "", "phones": it.get("prompt_phones"),
                                           **it.get("prompt_extra", {})})
        seqs.append(speech.training_sequence(target, prompt))
    return seqs


def proxy_scores(speech, sequences: list[tuple[list[int], int]], chunk: int = 8) -> tuple[dict[str, list[float]], float]:
    """Block influence, angular distance and teacher-forced loss rise for every layer; and the full loss."""
    from spade_tts.importance.teacher_forced import block_similarity, sequence_batch, speech_loss
    from spade_tts.pruning.layers import decoder_layers, skip_layers

    batch = sequence_batch(sequences, speech.pad_id)
    lm = speech.lm
    layers = decoder_layers(lm)
    scores = block_similarity(lm, layers, batch, chunk=chunk)
    full = speech_loss(lm, batch, chunk=chunk)
    rise = []
    for i in tqdm(range(len(layers)), desc="teacher-forced loss", unit="layer", leave=False):
        with skip_layers(lm, [i]):
            rise.append(speech_loss(lm, batch, chunk=chunk) - full)
    scores["tf_loss_rise"] = rise
    return scores, full


def wli_stability(per_item: np.ndarray, keep: int, resamples: int = 1000, seed: int = 0) -> dict:
    """How much the WLI ranking depends on which items were drawn: the items resampled with
    replacement (the same draw for every layer, as the runs share their items), WLI recomputed.

    With sampled decoding and a high-variance WER, a few dozen items can rank layers by luck;
    this says so in the scores file instead of leaving it to a second run. ``per_item``: (layers,
    items) WER with each layer skipped. Returns per-layer 95 % intervals, how often each layer is
    among the ``keep`` most important, how often the whole kept set comes out the same, and the
    mean Spearman correlation of the resampled rankings with the measured one.
    """
    n, m = per_item.shape
    rng = np.random.default_rng(seed)
    boot = per_item[:, rng.integers(0, m, (max(1, resamples), m))].mean(-1)  # (layers, resamples)

    def kept(scores: np.ndarray) -> frozenset:  # the most important `keep`, ties to the lower index
        return frozenset(np.lexsort((np.arange(n), -scores))[:keep].tolist())

    chosen = kept(per_item.mean(1))
    sets = [kept(boot[:, r]) for r in range(boot.shape[1])]
    rho = [rank_correlation(per_item.mean(1).tolist(), boot[:, r].tolist()) for r in range(boot.shape[1])]
    rho = [r for r in rho if r is not None]
    return {"items": m, "resamples": boot.shape[1], "keep": keep, "kept_set": sorted(chosen),
            "kept_set_agreement": float(np.mean([s == chosen for s in sets])),
            "kept_fraction": [float(np.mean([i in s for s in sets])) for i in range(n)],
            "wli_ci95": [[float(a), float(b)] for a, b in zip(*np.percentile(boot, [2.5, 97.5], axis=1))],
            "mean_spearman": float(np.mean(rho)) if rho else None}


def rank_correlation(a: list[float], b: list[float]) -> float | None:
    """Spearman's rho; None (JSON null) when either ranking is constant and rho is undefined."""
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b)[0])


def iterative_removal(n_layers: int, keep: int, score_of, prefetch=None) -> list[int]:
    """Remove the least important remaining layer, rescore, repeat; returns layers in removal order.

    ``score_of(removed, candidate)`` is the metric with ``removed + [candidate]`` skipped; the
    candidate whose removal hurts least goes next (ties: the lower index). ``prefetch(removed,
    candidates)``, if given, is called first in each round, so that a caller can compute the
    round's scores together (batched, overlapped, spread over processes) before they are read.
    """
    removed: list[int] = []
    while n_layers - len(removed) > keep:
        rest = [i for i in range(n_layers) if i not in removed]
        if prefetch is not None:
            prefetch(removed, rest)
        removed.append(min(rest, key=lambda i: (score_of(removed, i), i)))
    return removed


def check_score_settings(cfg: ScoreConfig) -> None:
    """One-line errors for settings that cannot run, before any model does (`spade compress` calls it up front)."""
    from spade_tts.families.base import check_decoder, decoder_options

    if cfg.iterative_metric not in ("wli", "tf_loss_rise"):
        raise ValueError(f"iterative_metric={cfg.iterative_metric!r}: use wli or tf_loss_rise")
    check_decoder(cfg.decoder, cfg.device)
    if decoder_options(cfg.decoder)["compile_any_length"]:
        raise ValueError(f"decoder={cfg.decoder}: a compiled step is compiled again for every skipped layer (each "
                         "model depth is a new shape); score with decoder=static or static-int8")


def score_layers(cfg: ScoreConfig) -> dict:
    """Load the model, pick the items, and score every layer (resumable): the ``spade-scores/1`` dict."""
    from spade_tts.evaluation.items import ItemsError, select_items
    from spade_tts.families.registry import load_speech_lm
    from spade_tts.pruning.layers import decoder_layers, model_fingerprint
    from spade_tts.scoring import get_transcriber

    check_score_settings(cfg)
    processes = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch / torchrun
        from accelerate import PartialState

        processes = PartialState(cpu=not cfg.device.startswith("cuda"))
    device = str(processes.device) if processes and cfg.device.startswith("cuda") else cfg.device  # a GPU each
    items = []
    if cfg.wli or not cfg.data:  # the proxies of a manifest need no items (codes-only rows work)
        try:
            items, _ = select_items(cfg.items_file, cfg.data, cfg.corpus_dir, cfg.items_per_speaker,
                                    cfg.max_prompt_seconds, cfg.seed, cfg.max_items)
        except ItemsError as e:
            raise ItemsError(f"{e} (or rank layers by the teacher-forced metrics alone: wli=false)") from None
    speech = load_speech_lm(cfg.model or None, cfg.family or None, dtype=cfg.dtype, device=device,
                            family_config=cfg.family_config or None)
    speech.lm.eval()
    n = len(decoder_layers(speech.lm))
    keep = cfg.keep or n // 2
    if not 1 <= keep < n:
        raise ValueError(f"keep={keep} must be between 1 and {n - 1} for a {n}-layer model")
    fingerprint = model_fingerprint(speech.lm)
    overlap = cfg.wli and cfg.overlap_asr and device == "cpu"
    asr = get_transcriber(cfg.asr_model or None, cpu_threads=1 if overlap else 0) if cfg.wli else None
    run = ScoringRun(cfg, speech, items, fingerprint, asr, processes)
    return _score(cfg, speech, items, run, fingerprint, n, keep)


def _score(cfg: ScoreConfig, speech, items: list[dict], run: ScoringRun, fingerprint: str, n: int, keep: int) -> dict:
    from spade_tts.importance.plots import plot_importance, write_csv
    from spade_tts.importance.teacher_forced import sequence_batch, speech_loss
    from spade_tts.pruning.layers import skip_layers
    from spade_tts.pruning.prune import choose_kept_layers

    start = time.time()

    sequences = None
    if "proxies" not in run.state:
        sequences = proxy_sequences(speech, cfg, items)
        run.state["proxies"] = dict(zip(("scores", "full_loss"), proxy_scores(speech, sequences, cfg.tf_batch)))
        run.state["proxies"]["sequences"] = len(sequences)
        run.state["proxies"]["target_tokens"] = int(sequence_batch(sequences, speech.pad_id).target_mask.sum())
        run.save()
    proxies, full_loss = run.state["proxies"]["scores"], run.state["proxies"]["full_loss"]
    per_layer = [{"layer": i, **{m: float(proxies[m][i]) for m in PROXY_METRICS}} for i in range(n)]
    metrics = list(PROXY_METRICS)
    full_wer = None
    wli_wall, wli_new = 0.0, 0
    if cfg.wli:
        skips = [[]] + [[i] for i in range(n)]
        wli_new = sum(run.key(s) not in run.state["runs"] for s in skips)
        wli_wall = time.time()
        full_wer, *wli = run.wer_many(skips, desc="WLI (full model, then one layer skipped)")
        wli_wall = time.time() - wli_wall
        for i in range(n):
            per_layer[i]["wli"] = per_layer[i]["wer"] = wli[i]
            per_layer[i]["wli_uncapped"] = run.state["runs"][run.key([i])]["wer"]
        metrics = ["wli"] + metrics
    result = {"format": "spade-scores/1", "model": cfg.model or "built-in", "family": speech.family,
              "model_fingerprint": fingerprint,
              "num_layers": n, "full_wer": full_wer, "item_wer_cap": cfg.item_wer_cap if cfg.wli else None,
              "full_wer_uncapped": run.state["runs"][run.key([])]["wer"] if cfg.wli else None,
              "full_tf_loss": full_loss, "metrics": metrics,
              "items": len(items), "speakers": len({it["speaker"] for it in items}),
              "tf_sequences": run.state["proxies"].get("sequences"), "layers": per_layer}
    if cfg.wli:
        per_item = np.array([run.item_wers([i]) for i in range(n)])
        result["wli_stability"] = wli_stability(per_item, keep, cfg.bootstrap_resamples, cfg.seed)
        for i, row in enumerate(per_layer):
            row["wli_ci95"] = result["wli_stability"]["wli_ci95"][i]
            row["kept_fraction"] = result["wli_stability"]["kept_fraction"][i]

    if cfg.iterative and (cfg.wli or cfg.iterative_metric == "tf_loss_rise"):
        if cfg.iterative_metric == "wli":  # each round's candidates run together (spread over processes)
            order = iterative_removal(n, keep, lambda removed, i: run.wer(removed + [i]),
                                      prefetch=lambda removed, rest: run.wer_many([removed + [i] for i in rest]))
        else:
            batch = sequence_batch(sequences or proxy_sequences(speech, cfg, items), speech.pad_id)

            def tf_loss(removed, i):
                with skip_layers(speech.lm, sorted(removed + [i])):
                    return speech_loss(speech.lm, batch, chunk=cfg.tf_batch)
            order = iterative_removal(n, keep, tf_loss)
        kept = sorted(set(range(n)) - set(order))
        one_shot = choose_kept_layers(result, keep, metric=cfg.iterative_metric)
        result["iterative"] = {"metric": cfg.iterative_metric, "removed_order": order, "kept": kept,
                               "one_shot_kept": one_shot, "differs_from_one_shot": sorted(set(kept) ^ set(one_shot))}

    result["spearman"] = {a: {b: rank_correlation([l[a] for l in per_layer], [l[b] for l in per_layer])
                              for b in metrics} for a in metrics}
    if cfg.compare and cfg.wli:
        selections = {m: choose_kept_layers(result, keep, metric=m) for m in metrics + ["first"]}
        if "iterative" in result:
            selections["iterative"] = result["iterative"]["kept"]
        cuts = run.wer_many([sorted(set(range(n)) - set(kept)) for kept in selections.values()],
                            desc=f"cut to {keep} layers")
        result["cut_to_keep"] = {m: {"keep": kept, "wer": w} for (m, kept), w in zip(selections.items(), cuts)}
    result["seconds"] = round(time.time() - start, 1)
    # wall time of the WLI passes this call ran (full model + one per layer), per pass and item; None if all were cached
    result["seconds_per_layer_item"] = round(wli_wall / (wli_new * len(items)), 3) if wli_new else None
    if run.rank > 0:  # every process computed the same result; process 0 writes it
        return result
    out = Path(cfg.out_dir)
    write_json(out / "scores.json", result)
    write_csv(out / "scores.csv", per_layer, metrics)
    plot_importance(out / "importance.png", per_layer, metrics, full_wer)
    if cfg.json:
        write_json(cfg.json, result)
    print(format_table(result))
    return result


def format_table(result: dict) -> str:
    metrics = result["metrics"]
    lines = ["layer  " + "  ".join(f"{m:>15}" for m in metrics)]
    for row in result["layers"]:
        lines.append(f"{row['layer']:>5}  " + "  ".join(f"{row[m]:>15.4f}" for m in metrics))
    if result.get("full_wer") is not None:
        cap = result.get("item_wer_cap")
        lines.append(f"full model WER {100 * result['full_wer']:.1f} % on {result['items']} items"
                     + (f" (each item's WER capped at {100 * cap:.0f} %; plain mean "
                        f"{100 * result['full_wer_uncapped']:.1f} %)" if cap else ""))
    if result.get("wli_stability"):
        st = result["wli_stability"]
        lines.append(f"WLI's {st['keep']} most important layers {st['kept_set']} come out the same in "
                     f"{100 * st['kept_set_agreement']:.0f} % of item resamples (mean Spearman "
                     f"{st['mean_spearman'] if st['mean_spearman'] is None else round(st['mean_spearman'], 2)}); "
                     "a low figure means more items (items_per_speaker=) before trusting the ranking")
    for m, sel in result.get("cut_to_keep", {}).items():
        lines.append(f"cut to {len(sel['keep'])} layers by {m:>15}: WER {100 * sel['wer']:6.1f} %  kept {sel['keep']}")
    return "\n".join(lines)
