"""`spade compress`: score -> prune -> distill -> eval -> report, as one resumable command.

Each stage writes its output under ``out_dir`` and is skipped when that output is already
there, and the long stages (scoring, distillation, evaluation) resume inside themselves, so
stopping the command at any moment and running it again loses at most the item or step in
flight. ``--quick`` is the laptop demo: it makes its own small corpus (a few sentences per
offline voice) and runs every stage on it in about a quarter of an hour on 2 CPU cores; the
numbers it prints are then a smoke test of the method, not a measurement.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

ALIGNED_VOICES = ["flite_slt", "flite_rms", "flite_awb", "flite_kal16", "festival_slt_hts", "festival_kal",
                  "festival_ked"]


@dataclass
class CompressConfig:
    model: str = ""  # the full model's folder; empty = the built-in reference model
    out_dir: str = "runs/compress"
    corpus_dir: str = "data/corpus"  # held-out items to score and evaluate on (and, without tokens_dir, nothing else)
    tokens_dir: str = "data/reference_tokens"  # the teacher's tokenized training data, for distillation
    own_corpus: bool = False  # build a small corpus under out_dir/corpus instead (the --quick demo)
    own_corpus_train_per_voice: int = 30
    own_corpus_heldout: int = 2
    ratio: float = 0.5  # fraction of decoder layers removed (SPADE: half)
    metric: str = "wli"  # layer ranking used to prune: wli, block_influence, angular, tf_loss_rise, first
    keep_first: bool = False
    keep_last: bool = False
    score: dict = field(default_factory=dict)  # settings for `spade score` (ScoreConfig fields)
    distill: dict = field(default_factory=dict)  # settings for `spade distill` (DistillConfig fields)
    eval: dict = field(default_factory=dict)  # settings for `spade eval` (EvalConfig fields)


QUICK = {
    "out_dir": "runs/quick",
    "own_corpus": True,
    "score": {"items_per_speaker": 1, "compare": False},
    # the attention-map term is left out of the demo: on 2 CPU cores it costs two thirds of a step
    # (20 s against 7 s at batch 4, docs/distillation.md)
    "distill": {"steps": 30, "batch_size": 4, "data_fraction": 1.0, "warmup": 3, "lr": 5e-4, "save_every": 10,
                "log_every": 2, "w_attn": 0.0, "max_prompt_seconds": 3.0, "max_target_seconds": 4.0},
    "eval": {"items_per_speaker": 1, "rtf_runs": 1, "rtf_items": 2, "bootstrap_resamples": 1000},
}


def _stage_config(cls, base: dict, user: dict, stage: str):
    """A stage's dataclass from the pipeline's own paths (``base``) and the user's settings for it."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(user) - names)
    if unknown:
        raise ValueError(f"unknown {stage} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**{**base, **user})


def _done(path: Path, what: str) -> bool:
    if path.exists():
        print(f"[skip] {what}: already in {path}")
        return True
    return False


def compress(cfg: CompressConfig) -> dict:
    from spade_tts.distill.trainer import DistillConfig, distill
    from spade_tts.evaluation.evaluate import EvalConfig, evaluate_models
    from spade_tts.evaluation.report import write_report
    from spade_tts.importance.layer_importance import ScoreConfig, score_layers
    from spade_tts.pruning.prune import PruneConfig, prune_checkpoint
    from spade_tts.reference.synth import BUILTIN_MODEL

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(cfg.model) if cfg.model else BUILTIN_MODEL
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no model in {model_dir}: give model=FOLDER with a Hugging Face config.json")
    start = time.time()
    corpus, tokens = Path(cfg.corpus_dir), Path(cfg.tokens_dir)
    if cfg.own_corpus:
        corpus, tokens = out / "corpus", out / "tokens"
        _own_corpus(cfg, corpus, tokens, model_dir)

    print("== 1/5 score: layer importance")
    scores = out / "score" / "scores.json"
    if not _done(scores, "scores"):
        score_layers(_stage_config(ScoreConfig, {"model": cfg.model, "corpus_dir": str(corpus),
                                                 "out_dir": str(out / "score")}, cfg.score, "score"))

    print("== 2/5 prune")
    pruned = out / "pruned"
    if not _done(pruned / "spade_pruning.json", "pruned model"):
        prune_checkpoint(PruneConfig(model=cfg.model, scores=str(scores), out=str(pruned), ratio=cfg.ratio,
                                     metric=cfg.metric, keep_first=cfg.keep_first, keep_last=cfg.keep_last))

    print("== 3/5 distill")
    final = out / "distill" / "final"
    if not _done(final / "config.json", "distilled model"):
        distill(_stage_config(DistillConfig, {"teacher": cfg.model, "student": str(pruned),
                                              "out_dir": str(out / "distill"), "tokens_dir": str(tokens),
                                              "data_dir": str(out / "distill_data")}, cfg.distill, "distill"))

    print("== 4/5 eval: full vs pruned vs distilled, same items")
    models = [f"full={model_dir}", f"pruned={pruned}", f"distilled={final}"]
    results = evaluate_models(_stage_config(EvalConfig, {"models": models, "corpus_dir": str(corpus),
                                                         "out_dir": str(out / "eval"),
                                                         "json": str(out / "eval" / "eval.json")}, cfg.eval, "eval"))

    print("== 5/5 report")
    index = write_report(out / "report", results, scores_json=str(scores),
                         distill_log_jsonl=str(out / "distill" / "train_log.jsonl"))
    summary = {"report": str(index), "eval": str(out / "eval" / "eval.json"), "scores": str(scores),
               "pruned": str(pruned), "distilled": str(final), "seconds": round(time.time() - start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done in {summary['seconds'] / 60:.1f} min; open {index}")
    return summary


def _own_corpus(cfg: CompressConfig, corpus: Path, tokens: Path, model_dir: Path) -> None:
    """A small corpus of the offline voices, tokenized with the model's own codec (both resumable/skipped)."""
    from spade_tts.data.build import DataConfig, build_corpus
    from spade_tts.reference.dataset import prepare_tokens

    print("== 0/5 corpus: a small one of its own (offline voices)")
    build_corpus(DataConfig(out_dir=str(corpus), voices=ALIGNED_VOICES, train_per_voice=cfg.own_corpus_train_per_voice,
                            heldout=cfg.own_corpus_heldout, chunk_size=20))  # resumable: finished chunks are kept
    if not _done(tokens / "index.json", "tokens"):  # index.json is written last
        prepare_tokens(corpus, model_dir, tokens)
