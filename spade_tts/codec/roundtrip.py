"""`spade codec eval`: what the speech tokenizer costs, on held-out speech.

The tokenizer bounds every model built on it: no LM can sound better than tokens -> audio of
the original recording. Each held-out item is scored as recorded and after the round trip with
the same scorers the models are scored with. Speaker cosine is taken against a *different*
utterance of the same speaker (as a zero-shot prompt would be), so the two rows compare.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm


@dataclass
class RoundTripConfig:
    corpus_dir: str = "data/corpus"
    codec_dir: str = "data/codec"
    items_per_speaker: int = 25
    json: str = "data/codec/roundtrip.json"
    seed: int = 0


def _summary(rows: list[dict], key: str) -> dict:
    from spade_tts.scoring import mean_wer

    return {
        "wer": mean_wer([r["text"] for r in rows], [r[f"{key}_transcript"] for r in rows]),
        "sim_to_other_utterance": float(np.mean([r[f"{key}_sim"] for r in rows])),
        "dnsmos_p808": float(np.mean([r[f"{key}_dnsmos"]["p808"] for r in rows])),
        "dnsmos_ovrl": float(np.mean([r[f"{key}_dnsmos"]["ovrl"] for r in rows])),
    }


def roundtrip_table(cfg: RoundTripConfig) -> dict:
    from spade_tts.audio import load_audio
    from spade_tts.codec import load_tokenizer
    from spade_tts.data.build import read_jsonl
    from spade_tts.scoring import dnsmos, get_speaker_encoder, get_transcriber

    corpus = Path(cfg.corpus_dir)
    tok = load_tokenizer(cfg.codec_dir)
    manifest = corpus / "manifests" / "heldout.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found; run `spade data build` first")
    by_spk: dict[str, list[dict]] = {}
    for r in read_jsonl(manifest):
        by_spk.setdefault(r["speaker"], []).append(r)
    asr, enc = get_transcriber(None), get_speaker_encoder()
    rows = []
    for spk in sorted(by_spk):
        rng = random.Random(f"{cfg.seed}-{spk}")
        picks = rng.sample(by_spk[spk], min(cfg.items_per_speaker + 1, len(by_spk[spk])))
        other = load_audio(corpus / picks[0]["audio"])
        for r in tqdm(picks[1:], desc=f"round trip {spk}", unit="utt"):
            audio = load_audio(corpus / r["audio"])
            recon = tok.decode(tok.encode(audio))
            row = {"id": r["id"], "speaker": spk, "text": r["text"]}
            for key, x in (("original", audio), ("roundtrip", recon)):
                row[f"{key}_transcript"] = asr.transcribe([x])[0]
                row[f"{key}_sim"] = enc.similarity(x, other)
                row[f"{key}_dnsmos"] = dnsmos(x)
            row["roundtrip_sim_to_original"] = enc.similarity(recon, audio)
            rows.append(row)
    result = {
        "codec": {**tok.config.__dict__, "tokens_per_second": tok.config.tokens_per_second},
        "items": len(rows), "speakers": len(by_spk),
        "original": _summary(rows, "original"), "roundtrip": _summary(rows, "roundtrip"),
        "roundtrip_sim_to_original": float(np.mean([r["roundtrip_sim_to_original"] for r in rows])),
        "per_speaker": {}, "per_item": rows,
    }
    for spk in sorted(by_spk):
        sub = [r for r in rows if r["speaker"] == spk]
        result["per_speaker"][spk] = {"original": _summary(sub, "original"), "roundtrip": _summary(sub, "roundtrip")}
    Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.json).write_text(json.dumps(result, indent=2))
    print(markdown_table(result))
    return result


def markdown_table(result: dict) -> str:
    lines = ["| audio | Whisper WER | speaker cosine (other utterance) | DNSMOS P.808 | DNSMOS OVRL |",
             "|---|---|---|---|---|"]
    for key, label in (("original", "original"), ("roundtrip", "tokens -> audio")):
        s = result[key]
        lines.append(f"| {label} | {100 * s['wer']:.1f} % | {s['sim_to_other_utterance']:.3f} | "
                     f"{s['dnsmos_p808']:.2f} | {s['dnsmos_ovrl']:.2f} |")
    return "\n".join(lines)
