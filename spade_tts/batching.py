"""Training-shaped batches: ``(input_ids, loss_from)`` sequences right-padded, with the labels that count.

Every family's sequences (``SpeechLM.training_sequence``) are one token list and the position
after which the loss counts (the target speech and the stop token; the prompt is context). The
built-in model's trainer, distillation and the teacher-forced importance metrics all batch them
here, so all three count exactly the same tokens.
"""
from __future__ import annotations

import torch


def collate(examples: list[tuple[list[int], int]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 up to and including position ``loss_from``)."""
    if not examples:
        raise ValueError("no sequences to batch")
    n = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), n), int(pad), dtype=torch.long)
    labels = torch.full((len(examples), n), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for b, (ids, loss_from) in enumerate(examples):
        if not 0 <= loss_from < len(ids) - 1:
            raise ValueError(f"sequence {b}: loss_from={loss_from} leaves no target token in {len(ids)} tokens")
        t = torch.tensor(ids)
        input_ids[b, : len(ids)] = t
        mask[b, : len(ids)] = 1
        labels[b, loss_from + 1 : len(ids)] = t[loss_from + 1 :]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
