"""`spade`: one entry point, one subcommand per stage, built from the table :data:`STAGES`.

A stage is its config dataclass and its function. Every field of the config is a flag
(``--field-name``; ``--flag/--no-flag`` for a bool, several values for a list) whose help is the
field's comment in the source, and also a ``key=value`` setting: the command line holds no fact
that the config does not. Defaults, preset, recipe and command line are layered by
:func:`spade_tts.config.load_config`, one rule for every stage. Configs and functions are named as
``"module:attr"`` and imported only when their stage runs, so ``spade --help`` imports no torch.
Errors that come from the user's input are printed as one line, without a traceback, and exit
with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shutil
import sys
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from spade_tts import __version__
from spade_tts.config import ConfigError, field_comments, field_default, load_config, override_key, show_value, to_dict
from spade_tts.importance.metrics import help_text as metric_help


@dataclass(frozen=True)
class Stage:
    name: str  # the words after `spade`: "data build", "synth"
    config: str  # "module:Class" of the stage's config dataclass
    run: str  # "module:function" that takes that config and does the work
    help: str  # one line, listed by `spade --help`
    description: str = ""  # `spade STAGE --help`: what the stage does (prose, wrapped to the terminal)
    epilog: str = ""  # examples and explanations, shown as written
    aliases: dict[str, str] = field(default_factory=dict)  # extra option -> field: {"-o": "out"}
    # flag -> ("module:attr" of a dict of settings, help): a preset, layered under the recipe (compress --quick)
    presets: dict[str, tuple[str, str]] = field(default_factory=dict)
    # key -> (other key, value): setting key on the command line sets the other one too, unless it is also given
    # there; so prune's --keep replaces a recipe's ratio instead of conflicting with it (and --ratio its keep)
    resets: dict[str, tuple[str, Any]] = field(default_factory=dict)
    print_result: bool = False  # print what the function returns, as JSON (data build's summary)


STAGES = [
    Stage("data build", "spade_tts.data.build:DataConfig", "spade_tts.data.build:build_corpus",
          "synthesize the offline multi-speaker corpus (voices x sentences, phone timings)",
          "Synthesize every voice reading its sentences, with phone timings; resumable.",
          aliases={"-o": "out_dir"}, print_result=True),
    Stage("data family", "spade_tts.families.data:FamilyDataConfig", "spade_tts.families.data:family_dataset",
          "manifest of an LLM-TTS family (LLaSA, Orpheus, ...) -> distillation dataset",
          "Read a JSONL manifest ({\"audio\"|\"codes\", \"text\", \"speaker\"} a line; audio is encoded with the "
          "family's codec, codes are used as given), build the family's training sequences (voice prompt = another "
          "utterance of the speaker) and write a dataset that `spade distill dataset=FOLDER` reads. "
          "See docs/families/.",
          "example:\n  spade data family --model Llasa-1B --manifest train.jsonl -o runs/llasa/data",
          aliases={"-o": "out"}),
    Stage("codec fit", "spade_tts.codec.train:CodecFitConfig", "spade_tts.codec.train:fit_codec",
          "learn the speech tokenizer from the corpus (k-means codebook or learned FSQ)",
          "kind=kmeans: a codebook over log-mel frames (100 tokens/s); kind=fsq: a convolutional autoencoder with "
          "finite scalar quantization (50 tokens/s), trained for minutes= of CPU time, resumable.", aliases={"-o": "out_dir"}),
    Stage("codec eval", "spade_tts.codec.roundtrip:RoundTripConfig", "spade_tts.codec.roundtrip:roundtrip_table",
          "round-trip table: original audio vs tokens -> audio (WER, speaker cosine, DNSMOS)",
          "Original audio vs tokens -> audio on the held-out set: Whisper WER, speaker cosine, DNSMOS."),
    Stage("train-reference", "spade_tts.reference.train:ReferenceTrainConfig",
          "spade_tts.reference.train:train_reference",
          "train the built-in LLaSA-shaped reference LM (resumable)",
          "Tokenize the corpus (once), then train the LLaSA-shaped reference LM; rerun the same command to resume "
          "from runs/reference/last.pt.", aliases={"-o": "out_dir"}),
    Stage("synth", "spade_tts.synthesis:SynthConfig", "spade_tts.synthesis:synth",
          "text + voice prompt -> speech with a model (the built-in one by default)",
          "Zero-shot TTS: speak --text in the voice of --prompt-audio, whose transcript is --prompt-text (or of an "
          "offline voice, --prompt-voice; or of --prompt-codes). Uses the built-in model unless --model is given; "
          "an LLM-TTS family checkpoint is detected, or named with --family.",
          textwrap.dedent("""\
            examples:
              spade synth --prompt-voice festival_slt_hts --text "Hello there." -o out.wav
              spade synth --model runs/distill/final --text "Hello." --prompt-audio me.wav --prompt-text "Hi." -o o.wav
              spade synth --model CKPT --text "Hello." --prompt-codes ref.npy --prompt-text "Hi." -o codes.npy
            """),
          aliases={"-o": "output"}),
    Stage("score", "spade_tts.importance.layer_importance:ScoreConfig",
          "spade_tts.importance.layer_importance:score_layers",
          "rank decoder layers: WER with each layer skipped (WLI) and cheaper proxies, resumable",
          "For every decoder layer: skip it, speak the held-out items, transcribe them with Whisper and take the "
          "mean WER (WLI, SPADE's metric; higher = more important), each item's WER capped at 100 % (item_wer_cap; "
          "0 = plain mean) so that one babbling item cannot decide a layer. scores.json says how often the kept "
          "set survives resampling the items (wli_stability): if rarely, raise items_per_speaker. The same run "
          "computes block influence, angular distance and the teacher-forced loss rise on the same items, their "
          "Spearman correlations, and (compare=true) the WER of the model cut to `keep` layers by each metric. "
          "Writes scores.json, scores.csv and importance.png to out_dir; a killed run resumes from state.json. "
          "Cheap ranking without ASR: --no-wli. Iterative removal: --iterative.",
          "example:\n  spade score --model PATH items_per_speaker=8 -o runs/score_mine --json scores.json",
          aliases={"-o": "out_dir", "--items": "items_file"}),
    Stage("compress", "spade_tts.compress.pipeline:CompressConfig", "spade_tts.compress.pipeline:compress",
          "the whole method in one resumable command: score -> prune -> distill -> eval -> report",
          "Compress a model the SPADE way and leave a report to read and listen to: rank layers by WER when "
          "skipped, remove `ratio` of them, distill the pruned model from the full one, evaluate full / pruned / "
          "distilled on the same items, and write OUT_DIR/report/index.html. Every stage is skipped when its "
          "output exists; rerun the same command after an interruption to resume. Stage settings go through as "
          "stage.key=value (score.items_per_speaker=2, distill.steps=500, eval.dnsmos=false).",
          aliases={"-o": "out_dir"},
          presets={"--quick": ("spade_tts.compress.pipeline:QUICK",
                               "a self-contained demo, about 10 min on 2 CPU cores: its own small corpus, layers "
                               "scored on 7 items, 60 distillation steps, the three models compared on 28 items; "
                               "a demo of the method, not the full recipe's figures")}),
    Stage("prune", "spade_tts.pruning.prune:PruneConfig", "spade_tts.pruning.prune:prune_checkpoint",
          "keep the most important decoder layers (from a scores file) and save a smaller model",
          "Keep the most important decoder layers of a Hugging Face decoder-only LM (Llama, Qwen2, Qwen3, "
          "Mistral) by a per-layer score from `spade score`, and write a drop-in model folder: pruned weights and "
          "config, every side file of the source (tokenizer, vocabulary, codec), and spade_pruning.json (which "
          "teacher layer each student layer came from). Metrics (higher = more important): " + metric_help()
          + "; or any metric in the file; "
          "'iterative' uses the set found by greedy removal; 'first' keeps the first layers and needs no scores. "
          "--keep on the command line replaces the recipe's ratio, --ratio its keep.",
          textwrap.dedent("""\
            examples:
              spade prune --scores scores.json --ratio 0.5 -o runs/pruned      # SPADE: remove half, by WLI
              spade prune --scores scores.json --keep 6 --metric block_influence -o runs/bi6
              spade prune --metric first --keep 6 -o runs/first6               # baseline, no scores needed

            The scores file must come from the same model: its fingerprint and depth are checked.
            """),
          aliases={"-o": "out"}, resets={"keep": ("ratio", 0.0), "ratio": ("keep", 0)}),
    Stage("distill", "spade_tts.distill.trainer:DistillConfig", "spade_tts.distill.trainer:distill",
          "recover a pruned model by multi-level distillation from the full one (accelerate-ready)",
          "SPADE's multi-level distillation on Hugging Face Accelerate: the student from `spade prune` learns "
          "from the frozen teacher on a fixed subset of the teacher's data (data_fraction), with dynamic layer "
          "matching. Resumable: rerun the same command after a stop or a crash.",
          textwrap.dedent("""\
            examples:
              spade distill --recipe recipes/distill.yaml student=runs/pruned out_dir=runs/distill
              spade distill --recipe recipes/distill.yaml --student runs/pruned --matching static --w-attn 0
              accelerate launch --num_processes 4 -m spade_tts.distill --recipe recipes/distill.yaml student=...

            Writes OUT_DIR/final (a Hugging Face checkpoint with the student's side files), checkpoints/,
            train_log.jsonl and, if TensorBoard is installed, tensorboard/. See docs/distillation.md.
            """),
          aliases={"-o": "out_dir"}),
    Stage("eval", "spade_tts.evaluation.evaluate:EvalConfig", "spade_tts.evaluation.evaluate:evaluate_models",
          "compare models on the same items: WER, CER, SIM, DNSMOS, RTF, memory, params, 95 % CIs",
          "Speak the same zero-shot items with every model (batch 1, same seeds) and measure, per model: Whisper "
          "WER and CER, speaker cosine to the prompt (SIM), DNSMOS P.808 and OVRL, LM-only and end-to-end "
          "real-time factor (RTF), tokens per second, peak memory, parameters (LM and whole system) and depth. "
          "Every model after the first gets the paper-style gaps to the first.",
          textwrap.dedent("""\
            items: the built-in held-out set (data/corpus; items_per_speaker=N per voice) unless --items LIST,
            a Seed-TTS-eval style file, one item per line (paths relative to the list file; '#' comments):
                id|prompt_text|prompt_wav|target_text

            measured:
              WER, CER   mean of per-item rates, lower-case, punctuation stripped (Seed-TTS-eval)
              RTF        seconds / seconds of audio, after `warmup` syntheses, median of `rtf_runs` passes over
                         `rtf_items` items; LM = decode loop only, e2e = whole synthesis call
              memory     CUDA peak allocated on GPU; peak process RSS on CPU (see docs/evaluation.md)
              deltas     vs the first model: WER/CER in points, SIM difference, RTF ratio and speed-up,
                         params/memory in %; paired bootstrap 95 % CI over items (bootstrap_resamples=2000)

            examples:
              spade eval --models built-in runs/pruned runs/distilled --json runs/eval.json
              spade eval --models full=built-in small=runs/distilled --items seedtts/meta.lst --report runs/report
              spade eval --recipe recipes/eval.yaml items_per_speaker=4 rtf_runs=5 --models built-in runs/pruned

            Audio goes to OUT_DIR/<model>/wav/. A model already finished with the same items and settings is
            read back from OUT_DIR/<model>/result.json, so rerunning an interrupted comparison resumes it.
            """),
          aliases={"-o": "out_dir", "--out": "out_dir", "--items": "items_file", "--report": "report_dir"}),
    Stage("report", "spade_tts.evaluation.report:ReportConfig", "spade_tts.evaluation.report:report",
          "static HTML report: metrics table, layer importance, distillation curves, audio side by side",
          "Turn `spade eval --json` results (and optionally `spade score` layer scores and a distillation log) "
          "into one self-contained folder: index.html with inline CSS, charts as PNG, every wav copied under "
          "audio/. No network, no JavaScript.",
          textwrap.dedent("""\
            examples:
              spade report --eval runs/eval.json -o runs/report
              spade report --eval runs/eval.json --scores runs/score/scores.json \\
                           --distill-log runs/distill/train_log.jsonl -o runs/report

            The distillation log is JSONL: one dict per line with `step` and loss terms (loss, ce, kd, latent,
            attn, emb, ...); every numeric key except step/lr/time gets a panel.
            """),
          aliases={"-o": "out"}),
]

SETTINGS = ("settings, lowest to highest: the defaults shown above{presets}, --recipe FILE.yaml, then flags and\n"
            "key=value (the same keys; stage.key=value sets one entry of a mapping; key=value wins over a flag).")


def resolve(ref: str) -> Any:
    """``"module:attr"`` -> the object, imported now (the table names them so that it imports nothing)."""
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def _stage_epilog(stage: Stage) -> str:
    presets = "".join(f", {flag}" for flag in stage.presets)
    return "\n\n".join(part for part in (stage.epilog.rstrip(), SETTINGS.format(presets=presets)) if part)


def _fill(text: str) -> str:
    """Prose wrapped to the terminal, as argparse wraps help; epilogs keep their own layout."""
    width = min(100, max(40, shutil.get_terminal_size().columns - 2))
    return "\n\n".join(textwrap.fill(par, width, break_on_hyphens=False) for par in text.split("\n\n"))


def _is_bool(tp: Any) -> bool:
    """``bool`` or ``bool | None``: a --flag/--no-flag pair (None stays reachable as key=null)."""
    return tp is bool or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                          and set(typing.get_args(tp)) == {bool, type(None)})


def stage_parser(stage: Stage) -> tuple[argparse.ArgumentParser, type]:
    """The parser of one stage: ``--recipe``, its presets, one flag per config field (plus the declared
    aliases), and ``key=value`` settings. Every flag defaults to None, so "given" means typed."""
    cls = resolve(stage.config)
    p = argparse.ArgumentParser(prog=f"spade {stage.name}", description=_fill(stage.description or stage.help),
                                epilog=_stage_epilog(stage), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", help="YAML file with settings for this stage (see recipes/)")
    for flag, (_, text) in stage.presets.items():
        p.add_argument(flag, action="store_true", help=text)
    aliases: dict[str, list[str]] = {}
    for option, name in stage.aliases.items():
        aliases.setdefault(name, []).append(option)
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    for f in dataclasses.fields(cls):
        tp, shown = hints[f.name], show_value(field_default(f))
        text = " ".join(t for t in (comments.get(f.name, ""), f"(default: {shown})") if t).replace("%", "%%")
        options = [*aliases.pop(f.name, []), "--" + f.name.replace("_", "-")]
        if _is_bool(tp):
            p.add_argument(*options, dest=f.name, action=argparse.BooleanOptionalAction, help=text)
        elif typing.get_origin(tp) in (list, tuple):
            p.add_argument(*options, dest=f.name, nargs="+", metavar=f.name.upper(), help=text)
        else:
            p.add_argument(*options, dest=f.name, metavar="YAML" if tp is dict else f.name.upper(), help=text)
    if aliases:
        raise TypeError(f"stage {stage.name!r}: aliases for unknown field(s) {sorted(aliases)} of {cls.__name__}")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any setting above by its key (seed=1)")
    return p, cls


def top_parser() -> argparse.ArgumentParser:
    """`spade --help`: the stages and their one-line help, from the table; nothing of a stage is imported.
    The stage parsers here only check the name (a real stage never gets this far: :func:`main`)."""
    width = max(len(s.name) for s in STAGES) + 2
    lines = ["stages (run `spade STAGE --help` for each):"]
    for s in STAGES:
        lines.append(f"  {s.name:<{width}}{s.help}")
        lines += [f"  {'':<{width}}(`spade {s.name} {flag}`: {text.split(';')[0]})" for flag, (_, text) in
                  s.presets.items()]
    lines += ["", "settings: every flag of a stage is a setting of its config; every stage takes --recipe FILE.yaml",
              "and any number of key=value overrides."]
    parser = argparse.ArgumentParser(
        description="spade-tts: compress LLM-based TTS models by WER-based layer pruning and distillation.",
        prog="spade", epilog="\n".join(lines), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"spade-tts {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", help="one of the stages below")
    groups: dict[str, Any] = {}
    for s in STAGES:
        first, *rest = s.name.split()
        if not rest:
            sub.add_parser(first, add_help=False)
            continue
        if first not in groups:
            listing = "\n".join(f"  spade {t.name:<14}{t.help}" for t in STAGES if t.name.split()[0] == first)
            groups[first] = sub.add_parser(first, prog=f"spade {first}", description=listing,
                                           formatter_class=argparse.RawDescriptionHelpFormatter
                                           ).add_subparsers(metavar="ACTION")
        groups[first].add_parser(rest[0], add_help=False)
    return parser


def find_stage(argv: list[str]) -> Stage | None:
    for s in STAGES:
        words = s.name.split()
        if argv[:len(words)] == words:
            return s
    return None


def run_stage(stage: Stage, argv: list[str]) -> None:
    """Parse, layer the settings, print them, run. The only logic here is what the table declares."""
    parser, cls = stage_parser(stage)
    args = parser.parse_intermixed_args(argv)
    names = {f.name for f in dataclasses.fields(cls)}

    def is_setting(text: str) -> bool:
        return "=" in text and override_key(text) in names

    flags, overrides = {}, []
    for name in names:
        value = getattr(args, name)
        if isinstance(value, list):  # `--models A B seed=1`: argparse hands trailing settings to a list flag
            overrides += [v for v in value if is_setting(v)]
            value = [v for v in value if not is_setting(v)] or None
        if isinstance(value, bool):  # flags stay text, like key=value: one parse and one check (load_config)
            value = str(value).lower()
        if value is not None:
            flags[name] = value
    overrides += args.overrides
    base: dict[str, Any] = {}
    for flag, (ref, _) in stage.presets.items():
        if getattr(args, flag.lstrip("-").replace("-", "_")):
            base.update(resolve(ref))
    cfg = load_config(cls, args.recipe, overrides, base=base, flags=flags)
    given = set(flags) | {override_key(o) for o in overrides}
    for key, (other, value) in stage.resets.items():
        if key in given and other not in given:
            setattr(cfg, other, value)
    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, once, not once per process
        print("settings: " + json.dumps(to_dict(cfg)))
    result = resolve(stage.run)(cfg)
    if stage.print_result:
        print(json.dumps(result, indent=2, default=str))


USER_ERRORS = (ConfigError, FileNotFoundError, ValueError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stage = find_stage(argv)
    if stage is None:  # no stage named: help, --version, or argparse's own error for a wrong name
        parser = top_parser()
        args = parser.parse_args(argv)
        parser.print_help()
        return 0 if args.stage is None else 2
    try:
        run_stage(stage, argv[len(stage.name.split()):])
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"spade {stage.name}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
