"""Teacher-forced layer importance for any LLM-TTS family (`spade score --model PATH --data MANIFEST`).

The family's data hook turns (audio or codes, text) into the very sequences the model is trained
on (prompt + target speech); on those, with the model's own forward, every layer gets the three
cheap metrics of :mod:`spade_tts.importance.teacher_forced`: block influence, angular distance and
the rise of the target-speech cross-entropy when the layer is skipped. They need neither ASR nor
the codec's decoder (codes in the manifest need not even the encoder), so any checkpoint can be
ranked on a CPU. WLI needs both codec decoding and ASR and is not run for families here.

The output is a ``spade-scores/1`` file with the model's fingerprint and depth, which
``spade prune --metric tf_loss_rise`` (or ``block_influence``, ``angular``) accepts.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

FAMILY_METRICS = ("tf_loss_rise", "block_influence", "angular")


@dataclass
class FamilyScoreConfig:
    model: str = ""
    family: str = ""  # '' = detect from the folder
    family_config: str = ""  # generic family: its YAML when not next to the checkpoint
    data: str = ""  # manifest (JSONL) of the family's data hook
    out_dir: str = "runs/score"
    json: str = ""  # also copy the scores JSON here
    max_items: int = 32  # utterances read from the manifest (0 = all)
    prompts_per_target: int = 1
    seed: int = 0
    batch_size: int = 4  # sequences per forward
    device: str = "cpu"
    dtype: str = "auto"


def family_batch(sequences: list[tuple[list[int], int]], pad_id: int):
    """Right-padded :class:`TeacherForcedBatch`; targets are the tokens after each ``loss_from``."""
    from spade_tts.importance.teacher_forced import TeacherForcedBatch

    if not sequences:
        raise ValueError("no sequences to score")
    width = max(len(s) for s, _ in sequences)
    ids = torch.full((len(sequences), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    target = torch.zeros((len(sequences), width), dtype=torch.bool)
    for b, (s, loss_from) in enumerate(sequences):
        if not 0 <= loss_from < len(s) - 1:
            raise ValueError(f"sequence {b}: loss_from={loss_from} leaves no target token in {len(s)} tokens")
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
        target[b, loss_from : len(s) - 1] = True  # the NEXT token is a target token
    return TeacherForcedBatch(ids, mask, target)


def family_layer_scores(lm, batch, chunk: int = 4) -> tuple[dict[str, list[float]], float]:
    """Block influence, angular distance and teacher-forced loss rise per decoder layer; and the full loss."""
    from spade_tts.importance.teacher_forced import block_similarity, speech_loss
    from spade_tts.pruning.layers import decoder_layers, skip_layers

    layers = decoder_layers(lm)
    scores = block_similarity(lm, layers, batch, chunk=chunk)
    full = speech_loss(lm, batch, chunk=chunk)
    rise = []
    for i in range(len(layers)):
        with skip_layers(lm, [i]):
            rise.append(speech_loss(lm, batch, chunk=chunk) - full)
    scores["tf_loss_rise"] = rise
    return scores, full


def score_speech_lm(speech, sequences: list[tuple[list[int], int]], batch_size: int = 4, model_label: str = "") -> dict:
    """The spade-scores/1 dict of a loaded :class:`SpeechLM` on ``sequences``."""
    from spade_tts.pruning.layers import decoder_layers, model_fingerprint

    start = time.time()
    batch = family_batch(sequences, speech.pad_id)
    was_training = speech.lm.training
    speech.lm.eval()
    try:
        scores, full = family_layer_scores(speech.lm, batch, chunk=batch_size)
    finally:
        speech.lm.train(was_training)
    n = len(decoder_layers(speech.lm))
    layers = [{"layer": i, **{m: float(scores[m][i]) for m in FAMILY_METRICS}} for i in range(n)]
    return {"format": "spade-scores/1", "model": model_label or str(speech.path), "family": speech.family,
            "model_fingerprint": model_fingerprint(speech.lm), "num_layers": n, "full_wer": None,
            "full_tf_loss": full, "metrics": list(FAMILY_METRICS), "items": len(sequences),
            "target_tokens": int(batch.target_mask.sum()), "layers": layers, "seconds": round(time.time() - start, 2),
            "note": "teacher-forced metrics only (no WLI: that needs the family's codec and ASR)"}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def score_family(cfg: FamilyScoreConfig) -> dict:
    """Load the checkpoint, build its sequences from the manifest, score, write ``out_dir/scores.json``."""
    from spade_tts.families.data import family_sequences, load_utterances
    from spade_tts.families.registry import load_speech_lm

    if not cfg.model:
        raise ValueError("no model: give --model FOLDER (a family checkpoint)")
    if not cfg.data:
        raise ValueError("family scoring needs --data MANIFEST (JSONL of audio or codes + text + speaker)")
    speech = load_speech_lm(cfg.model, cfg.family or None, dtype=cfg.dtype, device=cfg.device,
                            family_config=cfg.family_config or None)
    utts = load_utterances(speech, cfg.data, cfg.max_items)
    seqs, _ = family_sequences(speech, utts, cfg.prompts_per_target, seed=cfg.seed)
    result = score_speech_lm(speech, seqs, cfg.batch_size, model_label=cfg.model)
    out = Path(cfg.out_dir)
    _write_json(out / "scores.json", result)
    if cfg.json:
        _write_json(Path(cfg.json), result)
    print("layer  " + "  ".join(f"{m:>15}" for m in FAMILY_METRICS))
    for row in result["layers"]:
        print(f"{row['layer']:>5}  " + "  ".join(f"{row[m]:>15.4f}" for m in FAMILY_METRICS))
    print(f"{speech.family}: {result['num_layers']} layers, {len(seqs)} sequences, full teacher-forced loss "
          f"{result['full_tf_loss']:.4f}; wrote {out / 'scores.json'}")
    return result
