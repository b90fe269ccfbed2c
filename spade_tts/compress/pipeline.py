"""`spade compress`: score -> prune -> distill -> eval -> report, as one resumable command, for any family.

Each stage writes its output under ``out_dir`` and is skipped when that output is already
there, and the long stages (scoring, distillation, evaluation) resume inside themselves, so
stopping the command at any moment and running it again loses at most the item or step in
flight. ``--quick`` is the laptop demo: it makes its own small corpus (a few sentences per
offline voice) and runs every stage on it in about a quarter of an hour on 2 CPU cores; the
numbers it prints are then a smoke test of the method, not a measurement.

With ``--model CKPT --data MANIFEST`` the same five stages run on any family's checkpoint: the
manifest's items are scored and evaluated (each target spoken in another utterance's voice), and
the distillation data is the family's own training sequences of the manifest (``data_fraction``
of them), made by the family's data hook. The stages only see the :class:`SpeechLM` interface.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from spade_tts.families import BUILTIN_TOKENS
from spade_tts.io import write_json

ALIGNED_VOICES = ["flite_slt", "flite_rms", "flite_awb", "flite_kal16", "festival_slt_hts", "festival_kal",
                  "festival_ked"]


@dataclass
class CompressConfig:
    model: str = ""  # the full model's folder (any family); empty = the built-in model
    family: str = ""  # '' = detect from the folder
    family_config: str = ""  # the generic family's YAML when it is not next to the checkpoint
    data: str = ""  # JSONL manifest (audio, text, speaker): items to score and evaluate, and the distillation data
    out_dir: str = "runs/compress"
    corpus_dir: str = "data/corpus"  # held-out items to score and evaluate on (and, without tokens_dir, nothing else)
    tokens_dir: str = BUILTIN_TOKENS  # the teacher's tokenized training data, for distillation
    own_corpus: bool = False  # build a small corpus under out_dir/corpus instead (the --quick demo; not with data)
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
    "own_corpus_heldout": 4,  # 28 items to evaluate on (4 per voice): enough for the distilled-vs-pruned interval
    "score": {"items_per_speaker": 1, "compare": False},
    # all five terms (the fused KD and attention-map terms made the attention maps cheap on a CPU); 60 steps of
    # 8 sequences, about 2 passes over the demo corpus's pairs (docs/compress.md)
    "distill": {"steps": 60, "batch_size": 8, "data_fraction": 1.0, "warmup": 5, "lr": 3e-4, "save_every": 20,
                "log_every": 5, "max_prompt_seconds": 3.0, "max_target_seconds": 6.0},
    "eval": {"items_per_speaker": 4, "rtf_runs": 1, "rtf_items": 2, "bootstrap_resamples": 1000},
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
    from spade_tts.evaluation.evaluate import EvalConfig, check_eval_settings, evaluate_models
    from spade_tts.evaluation.report import write_report
    from spade_tts.families.registry import detect_family, family_class, model_folder
    from spade_tts.importance.layer_importance import ScoreConfig, check_score_settings, score_layers
    from spade_tts.pruning.prune import PruneConfig, prune_checkpoint

    out = Path(cfg.out_dir)
    model_dir = model_folder(cfg.model or None)
    family = cfg.family or ("generic" if cfg.family_config else detect_family(model_dir))
    if not cfg.data and not family_class(family).ships_training_data:  # found now, not after scoring
        raise ValueError(f"a {family} checkpoint needs --data MANIFEST (JSONL of audio, text, speaker): the items "
                         "to score and evaluate, and the data to distill on")
    # every stage's own settings, checked now: a typo in eval= must not wait for scoring and distillation
    check_score_settings(_stage_config(ScoreConfig, {}, cfg.score, "score"))
    _stage_config(DistillConfig, {}, cfg.distill, "distill")
    check_eval_settings(_stage_config(EvalConfig, {}, cfg.eval, "eval"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    fam = {"family": cfg.family, "family_config": cfg.family_config}
    corpus, tokens = Path(cfg.corpus_dir), Path(cfg.tokens_dir)
    if cfg.own_corpus and not cfg.data:  # with your manifest, --quick keeps only its small settings
        corpus, tokens = out / "corpus", out / "tokens"
        _own_corpus(cfg, corpus, tokens, model_dir)

    print("== 1/5 score: layer importance")
    scores = out / "score" / "scores.json"
    if not _done(scores, "scores"):
        score_layers(_stage_config(ScoreConfig, {"model": cfg.model, "corpus_dir": str(corpus), "data": cfg.data,
                                                 "out_dir": str(out / "score"), **fam}, cfg.score, "score"))

    print("== 2/5 prune")
    pruned = out / "pruned"
    if not _done(pruned / "spade_pruning.json", "pruned model"):
        prune_checkpoint(PruneConfig(model=cfg.model, scores=str(scores), out=str(pruned), ratio=cfg.ratio,
                                     metric=cfg.metric, keep_first=cfg.keep_first, keep_last=cfg.keep_last, **fam))

    print("== 3/5 distill")
    final = out / "distill" / "final"
    if not _done(final / "config.json", "distilled model"):
        data = {"tokens_dir": str(tokens), "data_dir": str(out / "distill_data")}
        if cfg.data:  # the family's own training sequences of the manifest
            data = {"dataset": str(_family_dataset(cfg, model_dir, out / "distill_data"))}
        distill(_stage_config(DistillConfig, {"teacher": cfg.model, "student": str(pruned),
                                              "out_dir": str(out / "distill"), **data, **fam}, cfg.distill, "distill"))

    print("== 4/5 eval: full vs pruned vs distilled, same items")
    models = [f"full={model_dir}", f"pruned={pruned}", f"distilled={final}"]
    results = evaluate_models(_stage_config(EvalConfig, {"models": models, "corpus_dir": str(corpus),
                                                         "data": cfg.data, "out_dir": str(out / "eval"), **fam,
                                                         "json": str(out / "eval" / "eval.json")}, cfg.eval, "eval"))

    print("== 5/5 report")
    index = write_report(out / "report", results, scores_json=str(scores),
                         distill_log_jsonl=str(out / "distill" / "train_log.jsonl"))
    gain = distillation_gain(results)
    shown = []
    for key, v in gain.items():
        if v["delta"] is not None:
            digits = 3 if key == "sim" else 1
            lo, hi = v["ci95"]
            shown.append(f"{key} {v['delta']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]")
    print("distilled vs pruned, paired over the same items (95 % CI): " + ", ".join(shown))
    summary = {"report": str(index), "eval": str(out / "eval" / "eval.json"), "scores": str(scores),
               "pruned": str(pruned), "distilled": str(final), "distilled_vs_pruned": gain,
               "seconds": round(time.time() - start, 1)}
    write_json(out / "summary.json", summary)
    print(f"done in {summary['seconds'] / 60:.1f} min; open {index}")
    return summary


def distillation_gain(results: dict, resamples: int = 2000) -> dict:
    """What the distillation stage bought: the distilled model against the pruned one on the same items
    (WER and capped WER in points, speaker cosine), paired bootstrap intervals; negative WER = better."""
    from spade_tts.evaluation.evaluate import capped_wers
    from spade_tts.evaluation.stats import paired_bootstrap

    rows = {m["label"]: m["per_item"] for m in results["models"]}
    pruned, distilled = rows["pruned"], rows["distilled"]
    out = {}
    for key, values, scale in (("wer", lambda r: [x["wer"] for x in r], 100.0), ("wer_capped", capped_wers, 100.0),
                               ("sim", lambda r: [x["sim"] for x in r], 1.0)):
        b = paired_bootstrap(values(pruned), values(distilled), resamples=resamples, seed=0)
        out[key] = {"delta": None if b["delta"] is None else scale * b["delta"],
                    "ci95": [None if c is None else scale * c for c in b["ci95"]], "n": b["n"]}
    return out


def _family_dataset(cfg: CompressConfig, model_dir: Path, out: Path) -> Path:
    """The manifest as the family's training sequences (``spade data family``), made once."""
    from spade_tts.families.data import FamilyDataConfig, build_family_dataset
    from spade_tts.families.registry import load_speech_lm

    if not _done(out / "spade_data.json", "distillation dataset"):
        speech = load_speech_lm(model_dir, cfg.family or None, family_config=cfg.family_config or None)
        build_family_dataset(speech, FamilyDataConfig(manifest=cfg.data, out=str(out)))
    return out


def _own_corpus(cfg: CompressConfig, corpus: Path, tokens: Path, model_dir: Path) -> None:
    """A small corpus of the offline voices, tokenized with the model's own codec (both resumable/skipped)."""
    from spade_tts.data.build import DataConfig, build_corpus
    from spade_tts.families.registry import load_speech_lm

    print("== 0/5 corpus: a small one of its own (offline voices)")
    build_corpus(DataConfig(out_dir=str(corpus), voices=ALIGNED_VOICES, train_per_voice=cfg.own_corpus_train_per_voice,
                            heldout=cfg.own_corpus_heldout, chunk_size=20))  # resumable: finished chunks are kept
    if not _done(tokens / "index.json", "tokens"):  # index.json is written last
        load_speech_lm(model_dir, cfg.family or None).tokenize_corpus(corpus, tokens)
