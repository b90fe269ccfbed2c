"""Zero-shot synthesis with any :class:`SpeechLM`: texts + voice prompts in, audio out, batched.

This is what `spade synth`, `spade score` (WLI) and `spade eval` all speak through, so that the
three measure the same thing: each prompt is checked and encoded by the family's codec once, the
family builds each request, the shared decode loop generates with the family's rule, and the
family's codec decoder turns the codes into audio. Item ``i`` of a call is numbered
``item_ids[i]`` (default: its position), which is what rules with a random stream per item
(the built-in model's) draw by, so the batch size does not change what an item says.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

PROMPT_RATE = 16000  # prompts come as 16 kHz mono, the rate every scorer reads


@dataclass
class SynthResult:
    audio: np.ndarray  # at ``sample_rate``, the codec's own rate
    sample_rate: int
    codes: np.ndarray
    tokens: int  # speech tokens generated
    guard_hits: int = 0  # length-guard interventions (phone-forced rules)
    truncated: bool = False  # the item hit a length limit
    lm_seconds: float = 0.0  # this item's share of its batch's decode-loop time (all of it at batch 1)
    extra: dict = field(default_factory=dict)  # its batch's GenerationStats.extra (speculative decoding's counts)


def check_texts(texts: list[str]) -> None:
    """The words to speak come first among the things a user can get wrong."""
    for t in texts:
        if not str(t).strip():
            raise ValueError("the text to speak is empty: give the words to synthesize (--text \"...\")")


def synthesize(speech, texts: list[str], prompt_audios: list[np.ndarray], prompt_texts: list[str],
               cfg=None, batch_size: int = 1, item_ids: list[int] | None = None,
               progress: str = "") -> list[SynthResult]:
    """Item i speaks ``texts[i]`` in the voice of ``prompt_audios[i]`` (16 kHz mono; its transcript
    ``prompt_texts[i]``); items decode ``batch_size`` at a time. ``progress``: a label for a
    progress bar over the batches ('' = none)."""
    from spade_tts.audio import check_speech
    from spade_tts.families.generate import generate

    check_texts(texts)
    if not (len(texts) == len(prompt_audios) == len(prompt_texts)):
        raise ValueError(f"{len(texts)} texts, {len(prompt_audios)} prompt audios and {len(prompt_texts)} prompt "
                         "texts: give one prompt per text")
    cfg = cfg or speech.generation_defaults()
    item_ids = list(range(len(texts))) if item_ids is None else list(item_ids)
    encoded: dict[int, np.ndarray] = {}
    requests = []
    for text, audio, ptext in zip(texts, prompt_audios, prompt_texts):
        if id(audio) not in encoded:  # one prompt shared by many texts is checked and encoded once
            check_speech(audio, PROMPT_RATE, what="prompt audio")
            encoded[id(audio)] = speech.encode_audio(audio, PROMPT_RATE)
        requests.append(speech.generation_request(text, ptext, encoded[id(audio)]))
    results = []
    starts = range(0, len(texts), max(1, batch_size))
    for start in (tqdm(starts, desc=progress, unit="batch", leave=False) if progress else starts):
        sl = slice(start, start + max(1, batch_size))
        gens, stats = generate(speech, requests[sl], cfg, item_ids[sl])
        for gen in gens:
            codes, audio, sr = speech.decode_generation(gen)
            results.append(SynthResult(np.asarray(audio, dtype=np.float32), int(sr), np.asarray(codes),
                                       len(speech.speech_ids(gen.ids)), gen.guard_hits, gen.truncated,
                                       stats.lm_seconds / len(gens), dict(stats.extra)))
    return results


PROMPT_SENTENCE = "The birch canoe slid on the smooth planks."


@dataclass
class SynthConfig:
    """`spade synth`: one text spoken in the voice of a prompt, by any family's checkpoint."""

    text: str = ""  # the words to speak (English for the built-in model)
    output: str = ""  # .wav (the codec's own rate) or .npy (the codes)
    model: str = ""  # '' = the built-in model
    family: str = ""  # '' = detect from the folder
    family_config: str = ""  # the generic family's YAML when it is not next to the checkpoint
    prompt_audio: str = ""  # a few seconds of the voice to copy (any rate, mono or stereo) ...
    prompt_text: str = ""  # ... and what is said in it
    prompt_voice: str = ""  # or an offline voice reading PROMPT_SENTENCE (flite_slt, festival_slt_hts, ...)
    prompt_codes: str = ""  # or the prompt's codec codes (.npy) with prompt_text (no codec encoder needed)
    temperature: float | None = None  # None = the family's default; 0 = greedy
    top_p: float | None = None  # nucleus; None = the family's default (built-in model: 0.8)
    soft_codes: bool | None = None  # built-in model: decode each token's nucleus mean, not the drawn code; None = folder's
    seed: int = 0  # sampling seed: the same seed speaks the same way
    max_seconds: float = 20.0  # length guard of phone-forced generation (the built-in model)
    max_new_tokens: int | None = None  # length guard in tokens (token-sampling families); None = the family's
    device: str = "cpu"  # cpu, cuda
    int8: bool = False  # CPU: int8 weight copies in the decode step (faster at batch 1, slightly lossy)
    # speculative decoding, lossless (the output follows the model's own distribution; docs/decoding.md): a draft
    # proposes draft_tokens tokens, the model checks them in one forward. student=PATH (a checkpoint with the same
    # speech tokens, e.g. the distilled student), skip=N (this model without its N least important layers by WLI in
    # draft_scores) or skip-layers=I,J,...; '' = off
    draft: str = ""
    draft_tokens: int = 4  # tokens the draft proposes per full-model forward
    draft_scores: str = ""  # scores.json of `spade score` on this model, for draft=skip=N; '' = <model>/scores.json
    draft_accept: str = "exact"  # or groups=N: group-level acceptance, not lossless (docs/decoding.md)


def synth(cfg: SynthConfig) -> dict:
    """Write ``cfg.output``; checks what the user gave before what is missing, then loads the model."""
    from spade_tts.audio import load_audio, save_wav
    from spade_tts.families.generate import generate
    from spade_tts.families.registry import load_speech_lm

    check_texts([cfg.text])
    if not cfg.output:
        raise ValueError("no output file: give -o out.wav (or out.npy for the codes)")
    for path in (cfg.prompt_audio, cfg.prompt_codes):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"prompt file {path} not found")
    given = [k for k in ("prompt_audio", "prompt_voice", "prompt_codes") if getattr(cfg, k)]
    if len(given) > 1:
        raise ValueError("give one voice prompt: --prompt-audio FILE with --prompt-text, --prompt-voice NAME, "
                         "or --prompt-codes FILE.npy with --prompt-text (or none, for a family's default voice)")
    if (cfg.prompt_audio or cfg.prompt_codes) and not cfg.prompt_text:
        raise ValueError(f"--{given[0].replace('_', '-')} needs --prompt-text: the words spoken in it")
    if cfg.draft:
        from spade_tts.families.speculative import check_draft

        check_draft(cfg.draft, cfg.draft_tokens, "static-int8" if cfg.int8 else "static", cfg.draft_accept)
    speech = load_speech_lm(cfg.model or None, cfg.family or None, device=cfg.device,
                            family_config=cfg.family_config or None)
    gen_cfg = speech.generation_config(temperature=cfg.temperature, top_p=cfg.top_p, soft_codes=cfg.soft_codes,
                                       seed=cfg.seed,  # temperature 0: greedy
                                       max_seconds=cfg.max_seconds, max_new_tokens=cfg.max_new_tokens,
                                       decoder="static-int8" if cfg.int8 else "static", draft=cfg.draft,
                                       draft_tokens=cfg.draft_tokens, draft_scores=cfg.draft_scores,
                                       draft_accept=cfg.draft_accept)
    if cfg.prompt_codes or not given:  # the prompt's codes as given, or no voice prompt at all
        codes = np.load(cfg.prompt_codes) if cfg.prompt_codes else None
        request = speech.generation_request(cfg.text, cfg.prompt_text if codes is not None else "", codes)
        (gen,), stats = generate(speech, [request], gen_cfg)
        hits, extra = gen.guard_hits, stats.extra
        codes, audio, sr = (speech.ids_to_codes(speech.speech_ids(gen.ids)), None, 0) if cfg.output.endswith(".npy") \
            else speech.decode_generation(gen)
    else:
        if cfg.prompt_voice:
            from spade_tts.audio import to_mono_16k
            from spade_tts.data.voices import synthesize as voice

            utt = voice([PROMPT_SENTENCE], cfg.prompt_voice)[0]
            prompt, ptext = to_mono_16k(utt.audio, utt.sample_rate), PROMPT_SENTENCE
        else:
            prompt, ptext = load_audio(cfg.prompt_audio), cfg.prompt_text
        res = synthesize(speech, [cfg.text], [prompt], [ptext], gen_cfg)[0]
        codes, hits, audio, sr, extra = res.codes, res.guard_hits, res.audio, res.sample_rate, res.extra
    note = f", {hits} phone(s) cut by the length guard" if hits else ""
    if extra.get("proposed"):
        note += (f"; draft {cfg.draft}: {extra['acceptance_rate']:.0%} of drafted tokens accepted, "
                 f"{extra['tokens_per_forward']:.2f} tokens per full-model forward"
                 + ("" if cfg.draft_accept == "exact" else f" ({cfg.draft_accept} acceptance: not lossless)"))
    if cfg.output.endswith(".npy"):
        np.save(cfg.output, codes)
        print(f"wrote {cfg.output}: codes of shape {tuple(np.shape(codes))}{note} ({speech.family})")
        return {"output": cfg.output, "codes": np.shape(codes)}
    save_wav(cfg.output, audio, sr)
    print(f"wrote {cfg.output}: {len(audio) / sr:.2f} s, {np.size(codes)} speech tokens{note} ({speech.family})")
    return {"output": cfg.output, "seconds": len(audio) / sr, "sample_rate": sr}
