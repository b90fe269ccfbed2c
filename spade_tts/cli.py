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
      codec fit         learn the speech tokenizer's codebook from the corpus
      codec eval        round-trip table: original audio vs tokens -> audio (WER, speaker cosine, DNSMOS)
      train-reference   train the built-in LLaSA-shaped reference LM (resumable)
      synth             text + voice prompt -> speech with a model (the built-in one by default)
      eval-reference    WER and speaker similarity of a model on the held-out set

    settings: every stage takes --recipe FILE.yaml and any number of key=value overrides.
    """
)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="YAML file with settings for this stage (see recipes/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings that override the recipe")


def _print_config(cfg) -> None:
    print("settings: " + json.dumps(to_dict(cfg)))


def cmd_data_build(args) -> None:
    from spade_tts.data.build import DataConfig, build_corpus

    cfg = load_config(DataConfig, args.recipe, args.overrides)
    _print_config(cfg)
    print(json.dumps(build_corpus(cfg), indent=2))


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


def cmd_synth(args) -> None:
    from spade_tts.audio import load_audio, save_wav
    from spade_tts.reference.synth import GenerationSettings, ReferenceTTS

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
                                  max_seconds=args.max_seconds)
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
    p.add_argument("-o", "--output", required=True, help="output .wav (16 kHz)")
    p.add_argument("--model", default=None, help="model folder (default: the built-in reference model)")
    p.add_argument("--temperature", type=float, default=1.0, help="speech-token temperature; 0 = greedy")
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=20.0, help="length guard for runaway generation")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("eval-reference", help="WER and speaker similarity on the held-out set",
                       description="Held-out sentences in the voice of another held-out utterance of the same "
                                   "speaker; Whisper WER against the text, speaker cosine against the prompt.")
    p.add_argument("--json", help="write the results (wer, sim, per item) here")
    _add_config_args(p)
    p.set_defaults(func=cmd_eval_reference)
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
