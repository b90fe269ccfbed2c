"""`spade prune`: keep the most important decoder layers of a checkpoint and save a drop-in model.

The layer scores come from ``spade score`` (a ``spade-scores/1`` JSON file). Because a scores
file is only meaningful for the weights it was measured on, it carries the model's
fingerprint and depth, and both are checked before anything is cut. The output folder is a
complete model: the pruned weights and config plus every side file of the source (tokenizer,
vocabulary, codec), and ``spade_pruning.json``, which records which teacher layer each
student layer came from, the map that distillation needs.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

SCORES_FORMAT = "spade-scores/1"
PRUNING_FORMAT = "spade-pruning/1"
PRUNING_FILE = "spade_pruning.json"
NO_SCORES_METRICS = ("first",)

# Files that save_pretrained rewrites for the pruned model; everything else is copied.
_WEIGHT_FILE = re.compile(r"^(model|pytorch_model|tf_model|flax_model)(-\d+-of-\d+)?"
                          r"\.(safetensors|bin|h5|msgpack)(\.index\.json)?$")


@dataclass
class PruneConfig:
    model: str = ""  # Hugging Face model folder; empty = the built-in model
    scores: str = ""  # spade-scores/1 JSON from `spade score` (not needed for metric=first)
    out: str = ""  # output folder for the pruned model
    keep: int = 0  # number of layers to keep; 0 = use ratio
    ratio: float = 0.0  # fraction of layers to REMOVE, in (0, 1); SPADE removes half (0.5); 0 = use keep
    metric: str = "wli"  # wli, block_influence, angular, tf_loss_rise, ..., iterative, or first
    keep_first: bool = False  # always keep layer 0
    keep_last: bool = False  # always keep the last layer
    family: str = ""  # LLM-TTS family of `model` (llasa, orpheus, ...); '' = detect (plain HF folders need none)
    family_config: str = ""  # the generic family's YAML when it is not next to the checkpoint


def n_keep_from(num_layers: int, keep: int | None = None, ratio: float | None = None) -> int:
    """How many layers to keep, from either a count or the fraction of layers to remove."""
    keep, ratio = keep or None, ratio or None
    if keep is not None and ratio is not None:
        raise ValueError(f"give keep ({keep}) or ratio ({ratio}), not both")
    if keep is None and ratio is None:
        raise ValueError("say how many layers to keep: keep=N (e.g. --keep 6) or ratio=R, the fraction removed "
                         "(e.g. --ratio 0.5)")
    if ratio is not None:
        if not 0 < ratio < 1:
            raise ValueError(f"ratio {ratio} is the fraction of layers to remove and must be in (0, 1), "
                             "e.g. 0.5 removes half")
        removed = math.floor(ratio * num_layers + 0.5)
        if removed < 1 or removed >= num_layers:
            raise ValueError(f"ratio {ratio} of {num_layers} layers removes {removed}; choose a ratio that removes "
                             f"1..{num_layers - 1} layers, or give keep=N")
        return num_layers - removed
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= num_layers:
        raise ValueError(f"keep {keep} is not a layer count in [1, {num_layers}] for this {num_layers}-layer model")
    return keep


def check_scores(scores: dict, where: str = "scores") -> None:
    """Raise ValueError unless ``scores`` is a well-formed spade-scores/1 dict."""
    if not isinstance(scores, dict) or scores.get("format") != SCORES_FORMAT:
        found = scores.get("format") if isinstance(scores, dict) else type(scores).__name__
        raise ValueError(f"{where} is not a {SCORES_FORMAT} file (format: {found!r}); make one with `spade score`")
    n = scores.get("num_layers")
    layers = scores.get("layers")
    if not isinstance(n, int) or not isinstance(layers, list):
        raise ValueError(f"{where} needs an integer num_layers and a list of layers; make it again with `spade score`")
    ids = [e.get("layer") if isinstance(e, dict) else None for e in layers]
    if not all(isinstance(i, int) for i in ids) or sorted(ids) != list(range(n)):
        raise ValueError(f"{where} must have one entry per layer 0..{n - 1}; make it again with `spade score`")


def choose_kept_layers(scores: dict, n_keep: int, metric: str = "wli", keep_first: bool = False,
                       keep_last: bool = False) -> list[int]:
    """The ``n_keep`` most important layers (sorted teacher indices).

    Every metric in a scores file is "higher = more important"; ties go to the lower index,
    so the choice is deterministic. ``first`` keeps layers 0..n_keep-1 and needs only
    ``num_layers``; ``iterative`` takes the set found by greedy removal in ``spade score``.
    """
    n = scores.get("num_layers") if isinstance(scores, dict) else None
    if metric not in NO_SCORES_METRICS:
        check_scores(scores)
    if not isinstance(n, int) or n < 1:
        raise ValueError("scores need num_layers, the depth of the model")
    if isinstance(n_keep, bool) or not isinstance(n_keep, int) or not 1 <= n_keep <= n:
        raise ValueError(f"cannot keep {n_keep} layers of {n}; keep must be in [1, {n}]")
    forced = sorted(({0} if keep_first else set()) | ({n - 1} if keep_last else set()))
    if len(forced) > n_keep:
        raise ValueError(f"keep_first and keep_last force {len(forced)} layers but only {n_keep} are kept")
    if metric == "iterative":
        kept = _iterative_kept(scores, n, n_keep)
        missing = [i for i in forced if i not in kept]
        if missing:
            raise ValueError(f"the iterative set for {n_keep} layers does not contain layer {missing[0]}; "
                             "drop keep_first/keep_last or choose another metric")
        return kept
    if metric == "first":
        order = list(range(n))
    else:
        values = _metric_values(scores, metric)
        order = sorted(range(n), key=lambda i: (-values[i], i))
    return sorted(forced + [i for i in order if i not in forced][: n_keep - len(forced)])


def _metric_values(scores: dict, metric: str) -> dict[int, float]:
    """``{layer: value}`` of one metric; a clear error names the metrics the file does have."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)

    entries = scores["layers"]
    if not all(number(e.get(metric)) for e in entries):
        have = sorted(set.intersection(*({k for k, v in e.items() if k != "layer" and number(v)} for e in entries)))
        if isinstance(scores.get("iterative"), dict):
            have.append("iterative")
        have.append("first")
        raise ValueError(f"metric {metric!r} is not in the scores for every layer; available: {', '.join(have)}")
    return {e["layer"]: float(e[metric]) for e in entries}


def _iterative_kept(scores: dict, n: int, n_keep: int) -> list[int]:
    """The kept set of greedy removal: ``kept`` when the size matches, else a prefix of ``removed_order``."""
    it = scores.get("iterative")
    if not isinstance(it, dict):
        raise ValueError("metric 'iterative' needs an 'iterative' section in the scores; "
                         "run `spade score` with iterative removal or choose another metric")
    kept = it.get("kept")
    if isinstance(kept, list) and len(kept) == n_keep:
        return sorted(int(i) for i in kept)
    order = it.get("removed_order") or []
    if n - n_keep <= len(order):
        removed = {int(i) for i in order[: n - n_keep]}
        return [i for i in range(n) if i not in removed]
    sizes = sorted({n - k for k in range(len(order) + 1)} | ({len(kept)} if isinstance(kept, list) else set()))
    raise ValueError(f"the iterative scores cover keeping {', '.join(map(str, sizes))} layers, not {n_keep}; "
                     "choose one of those or another metric")


def load_scores(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scores file {path} not found; make one with `spade score` or use --metric first")
    try:
        scores = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"scores file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    check_scores(scores, where=f"scores file {path}")
    return scores


def side_files(folder: Path) -> list[Path]:
    """Everything in a model folder except the config and the weights, which pruning rewrites."""
    weights = set()
    for index in folder.glob("*.index.json"):
        try:
            weights |= set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (json.JSONDecodeError, AttributeError):
            pass
    skip = {"config.json", PRUNING_FILE}
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.name not in skip and p.name not in weights
                  and not _WEIGHT_FILE.match(p.name))


def prune_checkpoint(cfg: PruneConfig) -> Path:
    """Load, check the scores against the model, prune, and write a drop-in model folder atomically."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from spade_tts.pruning.layers import find_decoder, model_fingerprint, prune_layers

    # What the user gave is checked before what they left out: a wrong --scores or --model is the
    # first thing to fix, and would still be wrong after adding -o.
    scores = load_scores(cfg.scores) if cfg.scores else None
    from spade_tts.families.registry import model_folder

    source = model_folder(cfg.model or None)
    family = _family_of(cfg, source)
    if family is None and not (source / "config.json").is_file():
        raise FileNotFoundError(f"no model in {source}: expected a Hugging Face folder with config.json "
                                "or a checkpoint of an LLM-TTS family (--family NAME)")
    if not cfg.out:
        raise ValueError("no output folder: give -o/--out FOLDER (or out=FOLDER)")
    out = Path(cfg.out)
    if out.resolve() == source.resolve():
        raise ValueError(f"output folder {out} is the source model; choose another -o")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / PRUNING_FILE).is_file())):
        raise ValueError(f"{out} exists and is not a pruned model folder; choose another -o or remove it")
    if scores is None and cfg.metric not in NO_SCORES_METRICS:
        raise ValueError(f"metric {cfg.metric!r} needs a scores file: give --scores FILE from `spade score`, "
                         "or use --metric first")

    speech = None
    if family is not None:  # an LLM-TTS family checkpoint: its adapter loads and saves it in its own format
        from spade_tts.families.registry import load_speech_lm

        # in the dtype the folder stores (the built-in model computes in float32 but ships float16)
        stored = json.loads((source / "config.json").read_text()) if (source / "config.json").is_file() else {}
        dtype = stored.get("dtype") or stored.get("torch_dtype") or "auto"
        speech = load_speech_lm(source, family, dtype=dtype, family_config=cfg.family_config or None)
        depth = len(find_decoder(speech.lm).layers)
    else:
        # Everything the user can get wrong is checked before the weights are read.
        depth = AutoConfig.from_pretrained(source).get_text_config(decoder=True).num_hidden_layers
    if scores is not None and scores["num_layers"] != depth:
        raise ValueError(f"scores file {cfg.scores} is for a {scores['num_layers']}-layer model but {source} has "
                         f"{depth} layers; score this model with `spade score --model {source}`")
    if scores is not None and not scores.get("model_fingerprint"):
        raise ValueError(f"scores file {cfg.scores} has no model_fingerprint, so it cannot be checked against "
                         f"{source}; make it again with `spade score --model {source}`")
    n_keep = n_keep_from(depth, cfg.keep, cfg.ratio)
    kept = choose_kept_layers(scores if scores is not None else {"num_layers": depth}, n_keep, cfg.metric,
                              cfg.keep_first, cfg.keep_last)

    model = speech.lm if speech is not None else AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    if len(find_decoder(model).layers) != depth:
        raise ValueError(f"{source}: config.json says {depth} layers but the model has "
                         f"{len(find_decoder(model).layers)}; fix config.json")
    fingerprint = model_fingerprint(model)
    if scores is not None and scores["model_fingerprint"] != fingerprint:
        raise ValueError(f"scores file {cfg.scores} was computed on another model (fingerprint "
                             f"{scores.get('model_fingerprint')}, {source} has {fingerprint}); pass the --model it was "
                             f"scored on, or score this one with `spade score --model {source}`")
    prune_layers(model, kept)

    record = {
        "format": PRUNING_FORMAT,
        "source_model": str(cfg.model) if cfg.model else "built-in",
        "family": family,
        "source_fingerprint": fingerprint,
        "fingerprint": model_fingerprint(model),
        "teacher_layers": depth,
        "student_layers": len(kept),
        "kept": kept,  # student layer s is teacher layer kept[s]
        "removed": [i for i in range(depth) if i not in kept],
        "metric": cfg.metric,
        "keep_first": cfg.keep_first,
        "keep_last": cfg.keep_last,
        "scores_file": str(cfg.scores) if scores is not None else None,
        "full_wer": scores.get("full_wer") if scores is not None else None,
        "scores": scores["layers"] if scores is not None else None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with torch.no_grad():
            if speech is not None:
                speech.save_pretrained(tmp)
            else:
                model.save_pretrained(tmp)
        for path in side_files(source):
            if not (tmp / path.name).exists():  # save_pretrained's own files (generation_config) win
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, tmp / path.name)
        (tmp / PRUNING_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # printed here rather than by `spade prune`, so that `spade compress` and scripts show it too
    print(f"kept {len(kept)} of {depth} layers {kept} by {cfg.metric}; removed {record['removed']}; wrote {out}")
    return out


def _family_of(cfg: PruneConfig, source: Path) -> str | None:
    """The LLM-TTS family to load ``source`` with (the built-in model is one), or None for a plain HF folder."""
    if cfg.family or cfg.family_config:
        return cfg.family or "generic"
    if not source.is_dir():
        return None
    from spade_tts.families.registry import find_family

    return find_family(source)


def _replace_folder(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an earlier pruned model there is replaced only once ``new`` is complete."""
    if not out.exists():
        new.rename(out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    try:
        new.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
