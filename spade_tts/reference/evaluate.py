"""`spade eval-reference`: WER and speaker similarity of a model on held-out sentences.

Each item is a held-out sentence spoken zero-shot in the voice of a *different* held-out
utterance of the same speaker, the Seed-TTS-eval protocol: WER of Whisper's transcript
against the sentence, speaker cosine of the output against the prompt. The same items scored
on the original recordings and on their codec round trip give the ceiling next to it.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ReferenceEvalConfig:
    model: str = ""  # empty = the built-in model
    corpus_dir: str = "data/corpus"
    items_per_speaker: int = 15
    max_prompt_seconds: float = 4.0
    json: str = ""
    asr_model: str = ""  # empty = the offline Whisper tiny.en
    temperature: float = 1.0
    top_p: float = 0.8
    seed: int = 0
    batch_size: int = 1  # HF's growing KV cache makes CPU batches slower than single items
    device: str = "cpu"
    save_audio_dir: str = ""


def heldout_items(corpus_dir: str | Path, per_speaker: int, max_prompt_seconds: float, seed: int) -> list[dict]:
    """(prompt row, target row) pairs of one speaker, from aligned voices, fixed by ``seed``."""
    from spade_tts.data.build import read_jsonl

    manifest = Path(corpus_dir) / "manifests" / "heldout.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found; run `spade data build` first")
    by_spk: dict[str, list[dict]] = {}
    for r in read_jsonl(manifest):
        if r.get("phones"):
            by_spk.setdefault(r["speaker"], []).append(r)
    items = []
    for spk in sorted(by_spk):
        rows = by_spk[spk]
        rng = random.Random(f"{seed}-{spk}")
        short = [r for r in rows if r["seconds"] <= max_prompt_seconds]
        for target in rng.sample(rows, min(per_speaker, len(rows))):
            prompt = rng.choice([r for r in short if r["id"] != target["id"]])
            items.append({"speaker": spk, "prompt": prompt, "target": target})
    return items


def speak_items(tts, items: list[dict], corpus_dir: str | Path, settings, batch_size: int = 1,
                desc: str = "synthesizing") -> list[tuple[dict, np.ndarray, object]]:
    """Speak every item's target in its prompt's voice: (item, prompt audio, SynthResult) per item."""
    from spade_tts.audio import load_audio

    corpus = Path(corpus_dir)
    prompts = [load_audio(corpus / it["prompt"]["audio"]) for it in items]
    outs = tts.synthesize_pairs([it["target"]["text"] for it in items], prompts,
                                [it["prompt"]["text"] for it in items], settings, batch_size=max(1, batch_size),
                                progress=desc)
    return list(zip(items, prompts, outs))


def score_spoken(spoken: list[tuple], hyps: list[str], enc=None, save_audio_dir: str = "") -> list[dict]:
    """One row per spoken item: WER of its transcript ``hyps[i]``, and speaker cosine when ``enc`` is given."""
    from spade_tts.audio import save_wav
    from spade_tts.scoring import wer

    rows = []
    for (it, prompt_audio, res), hyp in zip(spoken, hyps):
        row = {"id": it["target"]["id"], "speaker": it["speaker"], "prompt_id": it["prompt"]["id"],
               "text": it["target"]["text"], "transcript": hyp, "wer": wer(it["target"]["text"], hyp),
               "seconds": len(res.audio) / 16000, "reference_seconds": it["target"]["seconds"],
               "guard_hits": res.guard_hits, "truncated": res.truncated}
        if enc is not None:
            row["sim"] = enc.similarity(res.audio, prompt_audio)
        rows.append(row)
        if save_audio_dir:
            save_wav(Path(save_audio_dir) / f"{it['target']['id']}.wav", res.audio, 16000)
    return rows


def synthesize_items(tts, items: list[dict], corpus_dir: str | Path, settings, asr, enc=None,
                     batch_size: int = 1, save_audio_dir: str = "", desc: str = "synthesizing") -> list[dict]:
    """Speak every item's target in its prompt's voice and score it: one row per item.

    Shared by evaluation and layer scoring so that both measure WER the same way.
    """
    spoken = speak_items(tts, items, corpus_dir, settings, batch_size, desc)
    return score_spoken(spoken, asr.transcribe([res.audio for _, _, res in spoken]), enc, save_audio_dir)


def evaluate_reference(cfg: ReferenceEvalConfig) -> dict:
    from spade_tts.reference.synth import GenerationSettings, ReferenceTTS
    from spade_tts.scoring import get_speaker_encoder, get_transcriber, mean_wer

    tts = ReferenceTTS.from_pretrained(cfg.model or None, device=cfg.device)
    items = heldout_items(cfg.corpus_dir, cfg.items_per_speaker, cfg.max_prompt_seconds, cfg.seed)
    settings = GenerationSettings(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    start = time.time()
    per_item = synthesize_items(tts, items, cfg.corpus_dir, settings, get_transcriber(cfg.asr_model or None),
                                get_speaker_encoder(), cfg.batch_size, cfg.save_audio_dir, desc="eval-reference")
    result = {
        "model": cfg.model or "built-in",
        "items": len(per_item),
        "speakers": len({p["speaker"] for p in per_item}),
        "wer": mean_wer([p["text"] for p in per_item], [p["transcript"] for p in per_item]),
        "sim": float(np.mean([p["sim"] for p in per_item])),
        "per_speaker": {s: {"wer": float(np.mean([p["wer"] for p in per_item if p["speaker"] == s])),
                            "sim": float(np.mean([p["sim"] for p in per_item if p["speaker"] == s]))}
                        for s in sorted({p["speaker"] for p in per_item})},
        "seconds": round(time.time() - start, 1),
        "per_item": per_item,
    }
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(result, indent=2))
    print(f"WER {100 * result['wer']:.1f} %  speaker cosine {result['sim']:.3f}  "
          f"({result['items']} items, {result['speakers']} speakers)")
    return result
