"""Cheap layer metrics from teacher-forced forwards: no generation, no ASR.

They are what other depth-pruning work ranks layers by, and what SPADE argues against, so
`spade score` computes them on the same items as WLI to compare the rankings:

* block influence: 1 - cos(layer input, layer output), averaged over target positions;
* angular distance: arccos(cos(input, output)) / pi, the same angle on a linear scale;
* teacher-forced loss rise: how much the cross-entropy of the recorded target speech
  (the family's target tokens: speech, stop, and for the built-in model its phone move-on
  tokens) grows when the layer is skipped.

The hidden states are taken with forward hooks on the decoder layers rather than from
``output_hidden_states``, because HF's last entry is after the final norm, not the output of
the last layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TeacherForcedBatch:
    input_ids: torch.Tensor  # (B, L) right-padded
    attention_mask: torch.Tensor  # (B, L)
    target_mask: torch.Tensor  # (B, L) True where the NEXT token is a target token whose loss counts


def sequence_batch(sequences: list[tuple[list[int], int]], pad_id: int) -> TeacherForcedBatch:
    """Right-padded batch of ``(input_ids, loss_from)`` sequences (``SpeechLM.training_sequence``), counting
    the tokens training counts (:func:`spade_tts.batching.collate`): position p is a target when token p + 1 is."""
    from spade_tts.batching import collate

    batch = collate(sequences, pad_id)
    target = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    target[:, :-1] = batch["labels"][:, 1:] != -100
    return TeacherForcedBatch(batch["input_ids"], batch["attention_mask"], target)


def _hidden(x):
    return x[0] if isinstance(x, tuple) else x


def _chunks(batch: TeacherForcedBatch, chunk: int, device):
    """(ids, mask, target) of ``chunk`` items at a time, items of similar length together and each
    chunk cut to its longest item: right padding is never attended to by the real tokens (causal
    attention), so the cut changes nothing but the work, which padding to the longest of 50+
    items would otherwise nearly double."""
    lengths = batch.attention_mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    for i in range(0, len(order), chunk):
        rows = order[i : i + chunk]
        width = int(lengths[rows].max())
        yield (batch.input_ids[rows, :width].to(device), batch.attention_mask[rows, :width].to(device),
               batch.target_mask[rows, :width].to(device))


@torch.no_grad()
def speech_loss(model, batch: TeacherForcedBatch, chunk: int = 8) -> float:
    """Mean next-token cross-entropy over the target positions (the quantity skipping a layer raises)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for ids, mask, sel in _chunks(batch, chunk, device):
        logits = model(input_ids=ids, attention_mask=mask).logits
        nll = F.cross_entropy(logits[:, :-1][sel[:, :-1]].float(), ids[:, 1:][sel[:, :-1]], reduction="sum")
        total, count = total + float(nll), count + int(sel[:, :-1].sum())
    return total / max(count, 1)


@torch.no_grad()
def block_similarity(model, layers, batch: TeacherForcedBatch, chunk: int = 8) -> dict[str, list[float]]:
    """Per layer: block influence and angular distance between its input and output on target positions."""
    device = next(model.parameters()).device
    cos_sum = torch.zeros(len(layers), dtype=torch.float64)
    ang_sum = torch.zeros(len(layers), dtype=torch.float64)
    count = 0
    current: dict[str, torch.Tensor] = {}

    def make_hook(i):
        def hook(module, args, kwargs, output):
            x_in = _hidden(args[0] if args else kwargs["hidden_states"])[current["sel"]].float()
            x_out = _hidden(output)[current["sel"]].float()
            cos = F.cosine_similarity(x_in, x_out, dim=-1).clamp(-1, 1)
            cos_sum[i] += float(cos.sum())
            ang_sum[i] += float(torch.arccos(cos).sum() / torch.pi)
        return hook

    handles = [layer.register_forward_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for ids, mask, sel in _chunks(batch, chunk, device):
            current["sel"] = sel
            model(input_ids=ids, attention_mask=mask)
            count += int(sel.sum())
    finally:
        for h in handles:
            h.remove()
    return {"block_influence": (1 - cos_sum / count).tolist(), "angular": (ang_sum / count).tolist()}
