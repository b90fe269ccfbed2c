"""`spade`: one entry point, one subcommand per stage.

Every stage reads a typed config: defaults, then ``--recipe FILE.yaml``, then ``key=value``
overrides, so ``spade data build --recipe recipes/data.yaml train_per_voice=100`` works the
same for every stage. Errors that come from the user's input are printed as one line,
without a traceback, and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

from spade_tts.config import ConfigError, load_config, to_dict

EPILOG = textwrap.dedent(
    """
    stages (run `spade STAGE --help` for each):
      data build        synthesize the offline multi-speaker corpus (voices x sentences, phone timings)
      data family       manifest of an LLM-TTS family (LLaSA, Orpheus, ...) -> distillation dataset
      codec fit         learn the speech tokenizer's codebook from the corpus
      codec eval        round-trip table: original audio vs tokens -> audio (WER, speaker cosine, DNSMOS)
      train-reference   train the built-in LLaSA-shaped reference LM (resumable)
      synth             text + voice prompt -> speech with a model (the built-in one by default)
      eval-reference    WER and speaker similarity of a model on the held-out set
      score             rank decoder layers: WER with each layer skipped (WLI) and cheaper proxies, resumable
      compress          the whole method in one resumable command: score -> prune -> distill -> eval -> report
                        (`spade compress --quick`: a self-contained demo, about 12-15 min on 2 CPU cores)
      prune             keep the most important decoder layers (from a scores file) and save a smaller model
      distill           recover a pruned model by multi-level distillation from the full one (accelerate-ready)
      eval              compare models on the same items: WER, CER, SIM, DNSMOS, RTF, memory, params, 95 % CIs
      report            static HTML report: metrics table, layer importance, distillation curves, audio side by side

    settings: every stage takes --recipe FILE.yaml and any number of key=value overrides.
    """
)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="YAML file with settings for this stage (see recipes/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings that override the recipe")


def _add_family_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default=None, help="LLM-TTS family of --model (llasa, orpheus, cosyvoice2, spark-tts, "
                                                  "outetts, generic); detected from the folder when left out")
    p.add_argument("--family-config", default=None, help="YAML of the generic family when it is not next to the "
                                                         "checkpoint (implies --family generic)")


def _print_config(cfg) -> None:
    print("settings: " + json.dumps(to_dict(cfg)))


def cmd_data_build(args) -> None:
    from spade_tts.data.build import DataConfig, build_corpus

    cfg = load_config(DataConfig, args.recipe, args.overrides)
    _print_config(cfg)
    print(json.dumps(build_corpus(cfg), indent=2))


def cmd_data_family(args) -> None:
    from spade_tts.families.data import FamilyDataConfig, build_family_dataset
    from spade_tts.families.registry import load_speech_lm

    cfg = load_config(FamilyDataConfig, args.recipe, args.overrides)
    for key in ("manifest", "out"):
        if getattr(args, key):
            setattr(cfg, key, getattr(args, key))
    _print_config(cfg)
    speech = load_speech_lm(args.model, args.family, family_config=args.family_config)
    out = build_family_dataset(speech, cfg)
    meta = json.loads((out / "spade_data.json").read_text())
    print(f"{speech.family}: {meta['rows']} sequences, {meta['tokens']} tokens from {meta['utterances_used']} "
          f"utterances ({meta['with_prompt']} with a voice prompt); wrote {out} (spade distill dataset={out})")


def cmd_codec_fit(args) -> None:
    from spade_tts.codec.train import CodecFitConfig, fit_codec

    cfg = load_config(CodecFitConfig, args.recipe, args.overrides)
    _print_config(cfg)
    fit_codec(cfg)


def cmd_codec_eval(args) -> None:
    from spade_tts.codec.roundtrip import RoundTripConfig, roundtrip_table

    cfg = load_config(RoundTripConfig, args.recipe, args.overrides)
    _print_config(cfg)
    roundtrip_table(cfg)


def cmd_train_reference(args) -> None:
    from spade_tts.reference.train import ReferenceTrainConfig, train_reference

    cfg = load_config(ReferenceTrainConfig, args.recipe, args.overrides)
    _print_config(cfg)
    train_reference(cfg)


def _family_model(args) -> str | None:
    """The LLM-TTS family to use for ``--model`` (given by --family/--family-config or detected), or None."""
    if getattr(args, "family", None) or getattr(args, "family_config", None):
        return args.family or "generic"
    if not getattr(args, "model", None):
        return None
    from pathlib import Path

    from spade_tts.families.registry import find_family

    return find_family(Path(args.model)) if Path(args.model).is_dir() else None


def cmd_synth_family(args, family: str) -> None:
    """`spade synth --model FAMILY_CHECKPOINT`: the family's prompt, generation and codec decoding."""
    import numpy as np

    from spade_tts.audio import save_wav
    from spade_tts.families.base import GenerationConfig
    from spade_tts.families.generate import generate_codes
    from spade_tts.families.registry import load_speech_lm

    speech = load_speech_lm(args.model, family, device=args.device, family_config=args.family_config)
    prompt_codes, prompt_text = None, args.prompt_text or ""
    if args.prompt_codes:
        prompt_codes = np.load(args.prompt_codes)
    elif args.prompt_audio:
        import soundfile as sf

        from spade_tts.audio import load_audio

        if not args.prompt_text:
            raise ValueError("--prompt-audio needs --prompt-text: the words spoken in it")
        sr = sf.info(args.prompt_audio).samplerate
        prompt_codes = speech.encode_audio(load_audio(args.prompt_audio, sample_rate=sr), sr)
    elif args.prompt_voice:
        raise ValueError("--prompt-voice is for the built-in model; give --prompt-audio/--prompt-text "
                         "(or --prompt-codes) to a family checkpoint")
    cfg = GenerationConfig(temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                           greedy=args.temperature <= 0, max_new_tokens=args.max_new_tokens, int8_weights=args.int8)
    codes = generate_codes(speech, args.text, prompt_text, prompt_codes, cfg)
    if args.output.endswith(".npy"):
        np.save(args.output, codes)
        print(f"wrote {args.output}: codes of shape {tuple(np.shape(codes))} ({family})")
        return
    audio, sr = speech.decode_audio(codes)
    save_wav(args.output, audio, sr)
    print(f"wrote {args.output}: {len(audio) / sr:.2f} s, codes {tuple(np.shape(codes))} ({family})")


def cmd_synth(args) -> None:
    from spade_tts.audio import load_audio, save_wav
    from spade_tts.reference.synth import GenerationSettings, ReferenceTTS

    family = _family_model(args)
    if family is not None:
        cmd_synth_family(args, family)
        return
    if bool(args.prompt_audio) == bool(args.prompt_voice):
        raise ValueError("give either --prompt-audio FILE (with --prompt-text) or --prompt-voice NAME")
    if args.prompt_voice:
        from spade_tts.audio import to_mono_16k
        from spade_tts.data.voices import synthesize

        utt = synthesize([PROMPT_SENTENCE], args.prompt_voice)[0]
        prompt_audio, prompt_text = to_mono_16k(utt.audio, utt.sample_rate), PROMPT_SENTENCE
    else:
        if not args.prompt_text:
            raise ValueError("--prompt-audio needs --prompt-text: the words spoken in it")
        prompt_audio, prompt_text = load_audio(args.prompt_audio), args.prompt_text
    tts = ReferenceTTS.from_pretrained(args.model, device=args.device)
    settings = GenerationSettings(temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                  max_seconds=args.max_seconds, decoder="static-int8" if args.int8 else "static")
    res = tts.synthesize([args.text], prompt_audio, prompt_text, settings)[0]
    save_wav(args.output, res.audio, res.sample_rate)
    note = f", {res.guard_hits} phone(s) cut by the length guard" if res.guard_hits else ""
    print(f"wrote {args.output}: {len(res.audio) / res.sample_rate:.2f} s, {len(res.codes)} speech tokens{note}")


def cmd_eval_reference(args) -> None:
    from spade_tts.reference.evaluate import ReferenceEvalConfig, evaluate_reference

    cfg = load_config(ReferenceEvalConfig, args.recipe, args.overrides)
    if args.json:
        cfg.json = args.json
    _print_config(cfg)
    evaluate_reference(cfg)


def cmd_compress(args) -> None:
    from spade_tts.compress.pipeline import QUICK, CompressConfig, compress

    cfg = load_config(CompressConfig, args.recipe, args.overrides, base=QUICK if args.quick else None)
    if args.model:
        cfg.model = args.model
    _print_config(cfg)
    compress(cfg)


def cmd_score(args) -> None:
    from spade_tts.importance.layer_importance import ScoreConfig, score_layers

    family = _family_model(args)
    if family is not None or args.data:
        from spade_tts.importance.family_scores import FamilyScoreConfig, score_family

        cfg = load_config(FamilyScoreConfig, args.recipe, args.overrides)
        for key in ("json", "model", "data", "family_config"):
            if getattr(args, key):
                setattr(cfg, key, getattr(args, key))
        cfg.family = cfg.family or family or ""
        _print_config(cfg)
        score_family(cfg)
        return
    cfg = load_config(ScoreConfig, args.recipe, args.overrides)
    for key in ("json", "model"):
        if getattr(args, key):
            setattr(cfg, key, getattr(args, key))
    _print_config(cfg)
    score_layers(cfg)


def cmd_prune(args) -> None:
    from spade_tts.pruning.prune import PruneConfig, prune_checkpoint

    cfg = load_config(PruneConfig, args.recipe, args.overrides)
    for key in ("model", "scores", "out", "keep", "ratio", "metric", "keep_first", "keep_last", "family",
                "family_config"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.keep is not None and args.ratio is None:  # a flag replaces the recipe's choice, not adds to it
        cfg.ratio = 0.0
    if args.ratio is not None and args.keep is None:
        cfg.keep = 0
    _print_config(cfg)
    out = prune_checkpoint(cfg)
    info = json.loads((out / "spade_pruning.json").read_text())
    print(f"kept {info['student_layers']} of {info['teacher_layers']} layers {info['kept']} by {info['metric']}; "
          f"removed {info['removed']}; wrote {out}")


def cmd_eval(args) -> None:
    import dataclasses

    from spade_tts.evaluation.evaluate import EvalConfig, evaluate_models

    fields = {f.name for f in dataclasses.fields(EvalConfig)}
    models, overrides = [], list(args.overrides)
    for m in args.models or []:  # `--models A B seed=1`: argparse hands trailing key=value to --models
        if "=" in m and m.split("=", 1)[0].strip() in fields:
            overrides.append(m)
        else:
            models.append(m)
    cfg = load_config(EvalConfig, args.recipe, overrides)
    for key, value in (("models", models), ("items_file", args.items), ("json", args.json),
                       ("out_dir", args.out), ("report_dir", args.report)):
        if value:
            setattr(cfg, key, value)
    _print_config(cfg)
    evaluate_models(cfg)


def cmd_report(args) -> None:
    from spade_tts.evaluation.report import write_report

    index = write_report(args.out, args.eval, args.scores, args.distill_log, args.importance_png,
                         sentences=args.sentences, title=args.title)
    print(f"wrote {index} (open it in a browser; the folder is self-contained)")



def cmd_distill(args) -> None:
    import os

    from spade_tts.distill.trainer import DistillConfig, distill

    cfg = load_config(DistillConfig, args.recipe, args.overrides)
    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, print once, not once per process
        _print_config(cfg)
    distill(cfg)

PROMPT_SENTENCE = "The birch canoe slid on the smooth planks."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spade",
        description="spade-tts: compress LLM-based TTS models by WER-based layer pruning and distillation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")

    data = sub.add_parser("data", help="corpus tools").add_subparsers(dest="action", metavar="ACTION")
    p = data.add_parser("build", help="synthesize the offline corpus",
                        description="Synthesize every voice reading its sentences, with phone timings; resumable.")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_build)
    p = data.add_parser("family", help="turn (audio or codes, text) of an LLM-TTS family into a distillation dataset",
                        description="Read a JSONL manifest ({\"audio\"|\"codes\", \"text\", \"speaker\"} a line; audio "
                                    "is encoded with the family's codec, codes are used as given), build the family's "
                                    "training sequences (voice prompt = another utterance of the speaker) and write a "
                                    "dataset that `spade distill dataset=FOLDER` reads. See docs/families/.")
    p.add_argument("--model", required=True, help="checkpoint folder of the family (its tokenizer and layout)")
    _add_family_args(p)
    p.add_argument("--manifest", required=True, help="JSONL manifest")
    p.add_argument("-o", "--out", required=True, help="dataset folder to write")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_family)

    codec = sub.add_parser("codec", help="speech tokenizer tools").add_subparsers(dest="action", metavar="ACTION")
    p = codec.add_parser("fit", help="fit the tokenizer codebook on the corpus",
                         description="k-means codebook over log-mel frames of the training manifest.")
    _add_config_args(p)
    p.set_defaults(func=cmd_codec_fit)
    p = codec.add_parser("eval", help="round-trip table on the held-out set",
                         description="Original audio vs tokens -> audio: Whisper WER, speaker cosine, DNSMOS.")
    _add_config_args(p)
    p.set_defaults(func=cmd_codec_eval)

    p = sub.add_parser("train-reference", help="train the built-in reference LM",
                       description="Tokenize the corpus (once), then train the LLaSA-shaped reference LM; "
                                   "rerun the same command to resume from runs/reference/last.pt.")
    _add_config_args(p)
    p.set_defaults(func=cmd_train_reference)

    p = sub.add_parser("synth", help="synthesize speech in the voice of a prompt",
                       description="Zero-shot TTS: speak --text in the voice of --prompt-audio, whose transcript "
                                   "is --prompt-text. Uses the built-in model unless --model is given.")
    p.add_argument("--text", required=True, help="English text to speak")
    p.add_argument("--prompt-audio", help="a few seconds of the voice to copy (wav/flac, any rate, mono or stereo)")
    p.add_argument("--prompt-text", help="what is said in --prompt-audio")
    p.add_argument("--prompt-voice", help="instead of a recording, have an offline voice read a prompt "
                                          "(flite_slt, flite_rms, flite_awb, flite_kal16, festival_slt_hts, festival_kal, ...)")
    p.add_argument("-o", "--output", required=True, help="output .wav (16 kHz for the built-in model; the "
                                                              "codec's rate for a family), or .npy for the codes")
    p.add_argument("--model", default=None, help="model folder (default: the built-in reference model); an LLM-TTS "
                                                 "family checkpoint is detected, or name it with --family")
    _add_family_args(p)
    p.add_argument("--prompt-codes", default=None, help="family checkpoints: the prompt's codec codes (.npy) instead "
                                                        "of --prompt-audio (with --prompt-text)")
    p.add_argument("--max-new-tokens", type=int, default=1500, help="family checkpoints: length guard in tokens")
    p.add_argument("--temperature", type=float, default=1.0, help="speech-token temperature; 0 = greedy")
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=20.0, help="length guard for runaway generation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--int8", action="store_true", help="models on the CPU: int8 copies of the weights in the decode "
                                                        "step (faster at batch 1, slightly lossy; docs/decoding.md)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("eval-reference", help="WER and speaker similarity on the held-out set",
                       description="Held-out sentences in the voice of another held-out utterance of the same "
                                   "speaker; Whisper WER against the text, speaker cosine against the prompt.")
    p.add_argument("--json", help="write the results (wer, sim, per item) here")
    _add_config_args(p)
    p.set_defaults(func=cmd_eval_reference)

    p = sub.add_parser("compress", help="score -> prune -> distill -> eval -> report in one resumable command",
                       description="Compress a model the SPADE way and leave a report to read and listen to: rank "
                                   "layers by WER when skipped, remove `ratio` of them, distill the pruned model from "
                                   "the full one, evaluate full / pruned / distilled on the same items, and write "
                                   "OUT_DIR/report/index.html. Every stage is skipped when its output exists; rerun "
                                   "the same command after an interruption to resume. Stage settings go through as "
                                   "stage.key=value (score.items_per_speaker=2, distill.steps=500, eval.dnsmos=false).")
    p.add_argument("--quick", action="store_true",
                   help="demo preset: builds its own small corpus, 1 item per voice, 30 distillation steps; "
                        "about 12-15 min on 2 CPU cores; figures are a smoke test, not a measurement")
    p.add_argument("--model", help="full model folder (default: the built-in reference model)")
    _add_config_args(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("score", help="rank decoder layers by WER-based importance (WLI) and proxies",
                       description="For every decoder layer: skip it, speak the held-out items, transcribe them "
                                   "with Whisper and take the mean WER (WLI, SPADE's metric; higher = more important), each item's WER "
                                   "capped at 100 % (item_wer_cap; 0 = plain mean) so that one babbling item cannot "
                                   "decide a layer. scores.json says how often the kept set survives resampling the "
                                   "items (wli_stability): if rarely, raise items_per_speaker. "
                                   "The same run computes block influence, angular distance and the teacher-forced "
                                   "loss rise on the same items, their Spearman correlations, and (compare=true) the "
                                   "WER of the model cut to `keep` layers by each metric. Writes scores.json, "
                                   "scores.csv and importance.png to out_dir; a killed run resumes from state.json. "
                                   "Cheap ranking without ASR: wli=false. Iterative removal: iterative=true.")
    p.add_argument("--model", help="model folder (default: the built-in reference model)")
    _add_family_args(p)
    p.add_argument("--data", default=None, help="LLM-TTS family checkpoints: JSONL manifest of (audio or codes, text, "
                                                "speaker) to compute the teacher-forced metrics on (no WLI)")
    p.add_argument("--json", help="also write the scores (per-layer `wli`, full-model `wer`) here")
    _add_config_args(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "prune", help="remove the least important decoder layers and save a smaller model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Keep the most important decoder layers of a Hugging Face decoder-only LM (Llama, Qwen2, Qwen3, "
                    "Mistral) by a per-layer score from `spade score`, and write a drop-in model folder: pruned "
                    "weights and config, every side file of the source (tokenizer, vocabulary, codec), and "
                    "spade_pruning.json (which teacher layer each student layer came from).",
        epilog=textwrap.dedent("""
            examples:
              spade prune --scores scores.json --ratio 0.5 -o runs/pruned      # SPADE: remove half, by WLI
              spade prune --scores scores.json --keep 6 --metric block_influence -o runs/bi6
              spade prune --metric first --keep 6 -o runs/first6               # baseline, no scores needed

            The scores file must come from the same model: its fingerprint and depth are checked.
        """))
    p.add_argument("--model", default=None, help="source model folder (default: the built-in reference model)")
    _add_family_args(p)
    p.add_argument("--scores", default=None, help="spade-scores/1 JSON written by `spade score` for this model")
    p.add_argument("-o", "--out", default=None, help="output folder for the pruned model (replaced if it holds an "
                                                      "earlier `spade prune` result)")
    p.add_argument("--keep", type=int, default=None, help="number of layers to keep")
    p.add_argument("--ratio", type=float, default=None,
                   help="instead of --keep: the fraction of layers to REMOVE, in (0, 1); 0.5 removes half, as SPADE")
    p.add_argument("--metric", default=None,
                   help="which score ranks the layers, higher = more important (default wli: the WER of the model "
                        "with that layer skipped; also block_influence, angular, tf_loss_rise, or any metric in the "
                        "file); 'iterative' uses the set found by greedy removal; 'first' keeps the first layers "
                        "and needs no scores")
    p.add_argument("--keep-first", action="store_true", default=None, help="always keep layer 0")
    p.add_argument("--keep-last", action="store_true", default=None, help="always keep the last layer")
    _add_config_args(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "distill", help="train a pruned student from the frozen full model (CE + logits + latents + attention + "
                        "embeddings)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SPADE's multi-level distillation on Hugging Face Accelerate: the student from `spade prune` "
                    "learns from the frozen teacher on a fixed subset of the teacher's data (data_fraction), with "
                    "dynamic layer matching. Resumable: rerun the same command after a stop or a crash.",
        epilog=textwrap.dedent("""
            examples:
              spade distill --recipe recipes/distill.yaml student=runs/pruned out_dir=runs/distill
              spade distill --recipe recipes/distill.yaml student=runs/pruned matching=static w_attn=0
              accelerate launch --num_processes 4 -m spade_tts.distill --recipe recipes/distill.yaml student=...

            Writes OUT_DIR/final (a Hugging Face checkpoint with the student's side files), checkpoints/,
            train_log.jsonl and, if TensorBoard is installed, tensorboard/. See docs/distillation.md.
        """))
    _add_config_args(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser(
        "eval", help="compare models side by side on the same items, with 95 %% confidence intervals",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Speak the same zero-shot items with every model (batch 1, same seeds) and measure, per model: "
                    "Whisper WER and CER, speaker cosine to the prompt (SIM), DNSMOS P.808 and OVRL, LM-only and "
                    "end-to-end real-time factor (RTF), tokens per second, peak memory, parameters (LM and whole "
                    "system) and depth. Every model after the first gets the paper-style gaps to the first.",
        epilog=textwrap.dedent("""
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
        """))
    p.add_argument("--models", nargs="+", metavar="MODEL",
                   help="'built-in', a model folder, or LABEL=FOLDER; the first is the baseline")
    p.add_argument("--items", default=None, metavar="LIST", help="id|prompt_text|prompt_wav|target_text list "
                                                                "(default: the built-in held-out set)")
    p.add_argument("--json", default=None, help="write the results here (default OUT_DIR/eval.json)")
    p.add_argument("-o", "--out", default=None, help="folder for audio and per-model results (default runs/eval)")
    p.add_argument("--report", default=None, metavar="DIR", help="also write the HTML report to DIR")
    _add_config_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "report", help="write the static HTML report (metrics, layer importance, loss curves, audio)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn `spade eval --json` results (and optionally `spade score` layer scores and a distillation "
                    "log) into one self-contained folder: index.html with inline CSS, charts as PNG, every wav "
                    "copied under audio/. No network, no JavaScript.",
        epilog=textwrap.dedent("""
            examples:
              spade report --eval runs/eval.json -o runs/report
              spade report --eval runs/eval.json --scores runs/score/scores.json \\
                           --distill-log runs/distill/train_log.jsonl -o runs/report

            The distillation log is JSONL: one dict per line with `step` and loss terms (loss, ce, kd, latent,
            attn, emb, ...); every numeric key except step/lr/time gets a panel.
        """))
    p.add_argument("--eval", required=True, metavar="JSON", help="spade-eval/1 results from `spade eval --json`")
    p.add_argument("--scores", default=None, metavar="JSON", help="spade-scores/1 layer scores from `spade score` "
                                                                  "(its importance.png is picked up next to it)")
    p.add_argument("--importance-png", default=None, metavar="PNG", help="the layer-importance chart, if not next "
                                                                         "to --scores")
    p.add_argument("--distill-log", default=None, metavar="JSONL", help="distillation training log")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="report folder (index.html is written there)")
    p.add_argument("--sentences", type=int, default=6, help="sentences to play side by side (default 6)")
    p.add_argument("--title", default="spade-tts compression report")
    p.set_defaults(func=cmd_report)
    return parser


USER_ERRORS = (ConfigError, FileNotFoundError, ValueError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0 if args.stage is None else 2
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"spade {args.stage}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
