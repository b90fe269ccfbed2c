"""`spade score`: how much each decoder layer matters to the speech, by WER and by cheaper proxies.

WLI (SPADE's metric): skip layer i (its input passes straight to the next layer), speak the
evaluation items, transcribe them, and take the mean WER. A layer whose absence makes the
model mumble is important. On the same items, and in the same run, the cheap proxies other
pruning work uses (block influence, angular distance, teacher-forced loss rise) are computed
so that their rankings can be compared with WLI's (Spearman) and with the WER of the model
actually cut by each of them.

Every synthesis run (one skip set) is stored in ``out_dir/state.json`` as soon as it
finishes, written atomically, so a killed run resumes where it stopped and a finished one
is not redone; the state is tied to the model's fingerprint and the item list.

Several processes (``accelerate launch --num_processes N -m spade_tts.importance ...``, one per
GPU) share the synthesis runs: each takes every N-th missing run, writes what it finishes to
its own ``state.rank<R>.json``, and all of them merge the files at the end of each batch of
runs. Runs do not depend on which process or batch produced them (every item samples from its
own seeded stream), so N processes give the single process's scores.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

PROXY_METRICS = ("block_influence", "angular", "tf_loss_rise")


@dataclass
class ScoreConfig:
    model: str = ""  # empty = the built-in model
    corpus_dir: str = "data/corpus"
    items_per_speaker: int = 4  # held-out items per aligned voice (7 voices: 28 items)
    max_prompt_seconds: float = 4.0
    seed: int = 0  # item choice and sampling; the same seed for every layer, so runs differ only by the layer
    temperature: float = 1.0
    top_p: float = 0.8
    batch_size: int = 32  # items decoded together; the items of one layer fit one batch by default
    wli: bool = True  # False: only the teacher-forced proxies (seconds instead of minutes)
    iterative: bool = False  # also remove layers one at a time, rescoring the rest after each removal
    iterative_metric: str = "wli"  # or tf_loss_rise (much cheaper)
    keep: int = 0  # depth at which kept sets are compared (and iterative mode stops); 0 = half
    compare: bool = True  # WER of the model cut to `keep` layers by each metric, without distillation
    out_dir: str = "runs/score"
    json: str = ""  # also copy the scores JSON here
    asr_model: str = ""  # empty = offline Whisper tiny.en
    device: str = "cpu"
    # a skipped layer can make the model babble: cut an item at this many times the length its prompt's
    # speaking rate predicts (0 = only the 20 s guard); a cut item keeps its high WER, it just ends sooner
    max_length_ratio: float = 2.5
    overlap_asr: bool = True  # transcribe one run on a CPU thread while the next one is synthesized
    drop_finished: bool = True  # items that ended leave the decoding batch (same output, less work)
    bootstrap_resamples: int = 1000  # item resamples behind wli_stability (how much the ranking is luck)
    # each item's WER counts at most this much in WLI (0 = the plain mean): Whisper hallucinating on babble
    # gives single items WERs of 10-45 (1,000-4,500 %), which then decide the ranking (docs/layer-importance.md)
    item_wer_cap: float = 1.0


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class ScoringRun:
    """Synthesis runs keyed by the set of skipped layers, cached on disk as they finish.

    With ``overlap_asr`` the runs form a two-stage pipeline: while Whisper transcribes run k on
    one CPU thread, the LM synthesizes run k + 1 on the others. Each run's items decode as one
    batch whose finished rows leave it, and every item samples from its own random stream, so a
    run's result does not depend on how it was batched or scheduled.
    """

    def __init__(self, cfg: ScoreConfig, tts, items: list[dict], fingerprint: str, asr, processes=None):
        from spade_tts.reference.synth import GenerationSettings

        self.cfg, self.tts, self.items, self.asr = cfg, tts, items, asr
        self.processes = processes  # accelerate's PartialState when launched as several processes, else None
        self.rank = processes.process_index if processes else 0
        self.world = processes.num_processes if processes else 1
        self.settings = GenerationSettings(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                                           max_length_ratio=cfg.max_length_ratio, drop_finished=cfg.drop_finished)
        self.path = Path(cfg.out_dir) / "state.json"
        identity = {"model_fingerprint": fingerprint, "items": [(it["prompt"]["id"], it["target"]["id"]) for it in items],
                    "settings": asdict(self.settings)}
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
        _write_json(self.shard(self.rank), self.state)

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

        from spade_tts.pruning.layers import skip_layers
        from spade_tts.reference.evaluate import score_spoken, speak_items

        todo = list(dict.fromkeys(self.key(s) for s in skips if self.key(s) not in self.state["runs"]))
        mine = todo[self.rank::self.world]
        pending = []  # (key, skip, spoken, synthesis seconds, future of the transcripts)

        def finish(entry) -> None:
            key, skip, spoken, synth_seconds, future = entry
            rows = score_spoken(spoken, future.result())
            self.state["runs"][key] = {"skip": skip, "wer": float(np.mean([r["wer"] for r in rows])),
                                       "seconds": round(synth_seconds, 1),  # synthesis; Whisper overlaps the next run
                                       "per_item": [{k: r[k] for k in ("id", "wer", "transcript", "seconds", "truncated")}
                                                    for r in rows]}
            self.save()

        workers = 1 if self.cfg.overlap_asr else 0
        threads = torch.get_num_threads()
        if workers and self.tts.model.device.type == "cpu":  # Whisper has a core of its own, the LM the rest
            torch.set_num_threads(max(1, threads - 1))  # (oversubscribed OpenMP threads spin)
        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for key in tqdm(mine, desc=desc or "synthesis runs", unit="run", disable=len(mine) < 2 or self.rank > 0):
                    skip = [int(x) for x in key[len("skip:"):].split(",") if x]
                    started = time.time()
                    with skip_layers(self.tts.model, skip):
                        spoken = speak_items(self.tts, self.items, self.cfg.corpus_dir, self.settings,
                                             self.cfg.batch_size, desc=key if skip else "full")
                    future = pool.submit(self.asr.transcribe, [res.audio for _, _, res in spoken])
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


def proxy_scores(tts, items: list[dict], corpus_dir: str) -> tuple[dict[str, list[float]], float]:
    """Block influence, angular distance and teacher-forced loss rise for every layer; and the full loss."""
    from spade_tts.importance.teacher_forced import block_similarity, build_batch, speech_loss
    from spade_tts.pruning.layers import decoder_layers, skip_layers

    batch = build_batch(tts, items, corpus_dir)
    layers = decoder_layers(tts.model)
    scores = block_similarity(tts.model, layers, batch)
    full = speech_loss(tts.model, batch)
    rise = []
    for i in tqdm(range(len(layers)), desc="teacher-forced loss", unit="layer", leave=False):
        with skip_layers(tts.model, [i]):
            rise.append(speech_loss(tts.model, batch) - full)
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


def score_layers(cfg: ScoreConfig) -> dict:
    from spade_tts.pruning.layers import decoder_layers, model_fingerprint
    from spade_tts.reference.evaluate import heldout_items
    from spade_tts.reference.synth import ReferenceTTS
    from spade_tts.scoring import get_transcriber

    if cfg.iterative_metric not in ("wli", "tf_loss_rise"):
        raise ValueError(f"iterative_metric={cfg.iterative_metric!r}: use wli or tf_loss_rise")
    processes = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch / torchrun
        from accelerate import PartialState

        processes = PartialState(cpu=not cfg.device.startswith("cuda"))
    device = str(processes.device) if processes and cfg.device.startswith("cuda") else cfg.device  # a GPU each
    tts = ReferenceTTS.from_pretrained(cfg.model or None, device=device)
    n = len(decoder_layers(tts.model))
    keep = cfg.keep or n // 2
    if not 1 <= keep < n:
        raise ValueError(f"keep={keep} must be between 1 and {n - 1} for a {n}-layer model")
    items = heldout_items(cfg.corpus_dir, cfg.items_per_speaker, cfg.max_prompt_seconds, cfg.seed)
    if not items:
        raise ValueError(f"no phone-aligned held-out items in {cfg.corpus_dir}; build the corpus with aligned voices")
    fingerprint = model_fingerprint(tts.model)
    overlap = cfg.wli and cfg.overlap_asr and device == "cpu"
    asr = get_transcriber(cfg.asr_model or None, cpu_threads=1 if overlap else 0) if cfg.wli else None
    run = ScoringRun(cfg, tts, items, fingerprint, asr, processes)
    return _score(cfg, tts, items, run, fingerprint, n, keep)


def _score(cfg: ScoreConfig, tts, items: list[dict], run: ScoringRun, fingerprint: str, n: int, keep: int) -> dict:
    from spade_tts.importance.plots import plot_importance, write_csv
    from spade_tts.importance.teacher_forced import build_batch, speech_loss
    from spade_tts.pruning.layers import skip_layers
    from spade_tts.pruning.prune import choose_kept_layers

    start = time.time()

    if "proxies" not in run.state:
        run.state["proxies"] = dict(zip(("scores", "full_loss"), proxy_scores(tts, items, cfg.corpus_dir)))
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
    result = {"format": "spade-scores/1", "model": cfg.model or "built-in", "model_fingerprint": fingerprint,
              "num_layers": n, "full_wer": full_wer, "item_wer_cap": cfg.item_wer_cap if cfg.wli else None,
              "full_wer_uncapped": run.state["runs"][run.key([])]["wer"] if cfg.wli else None,
              "full_tf_loss": full_loss, "metrics": metrics,
              "items": len(items), "speakers": len({it["speaker"] for it in items}), "layers": per_layer}
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
            batch = build_batch(tts, items, cfg.corpus_dir)

            def tf_loss(removed, i):
                with skip_layers(tts.model, sorted(removed + [i])):
                    return speech_loss(tts.model, batch)
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
    _write_json(out / "scores.json", result)
    write_csv(out / "scores.csv", per_layer, metrics)
    plot_importance(out / "importance.png", per_layer, metrics, full_wer)
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        _write_json(Path(cfg.json), result)
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
