"""Today's (2026-11-27) phone-forced decoding of the built-in model, frozen as a test oracle.

This is the loop `spade_tts.reference.synth.generate_codes` ran before the built-in model became a
family whose generation goes through the shared decode loop (`spade_tts.families.generate`). The
tests check that the new path gives these codes token for token, so WLI and `spade eval` figures
of the built-in model do not move. Do not "fix" this file: it is the reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spade_tts.hf_compat import cache_kwargs, output_cache


@dataclass
class GenerationSettings:
    temperature: float = 1.0
    top_p: float = 0.8
    seed: int = 0
    max_phone_seconds: float = 0.6
    max_seconds: float = 20.0
    any_move_on: bool = True
    decoder: str = "static"
    max_length_ratio: float = 0.0
    drop_finished: bool = True


def item_uniforms(seed: int, item: int, steps: int, device) -> torch.Tensor:
    """(steps, 2) uniform draws owned by one item: column 0 decides moving on, column 1 picks the code.

    Each item draws from its own stream, seeded by (seed, item), so what it says depends on the
    seed and on the item only: not on which other items share its batch, on the batch size, or
    on rows leaving the batch as they finish (see ``StaticDecoder.keep_rows``).
    """
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(item)]).generate_state(1)[0]))
    return torch.rand(steps, 2, generator=gen).to(device)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor | None) -> torch.Tensor:
    """Greedy when temperature == 0, else nucleus sampling by inverse CDF with one uniform ``u`` per row."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    if top_p < 1.0:
        sorted_p = sorted_p * (sorted_p.cumsum(dim=-1) - sorted_p < top_p)
    cdf = sorted_p.cumsum(dim=-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None].contiguous(), right=True).clamp_(max=cdf.shape[1] - 1)
    return order.gather(1, pick).squeeze(1)


def choose_tokens(logits: torch.Tensor, lo: int, hi: int, nxt_ids: torch.Tensor, settings: GenerationSettings,
                  u: torch.Tensor | None, move_on: slice | None = None) -> torch.Tensor:
    """Per row: move on to ``nxt_ids`` (next phone or end) or emit a speech token from [lo, hi).

    The move-on decision is taken with the model's own probability of *any* non-speech token
    (``move_on``: phones and end; by default just ``nxt_ids``) at temperature 1 and without a
    nucleus cut; then a speech token is sampled with temperature and top-p. Two things make
    phones last far too long otherwise: the mass a small model spreads over the wrong next
    phone is timing information too, and a tempered nucleus draw against 4096 speech codes
    moves mass away from the single move-on token. ``u`` (rows, 2): the rows' uniform draws.
    """
    speech = logits[:, lo:hi]
    if move_on is None:
        adv_logit = logits.gather(1, nxt_ids[:, None]).squeeze(1)
    else:
        adv_logit = torch.logsumexp(logits[:, move_on].float(), dim=1)
    if settings.temperature <= 0:
        advance = adv_logit > speech.max(dim=-1).values
        codes = speech.argmax(dim=-1) + lo
    else:
        lse = torch.logsumexp(torch.cat([speech.float(), adv_logit[:, None].float()], dim=1), dim=1)
        p_adv = (adv_logit.float() - lse).exp()
        advance = u[:, 0] < p_adv
        codes = sample_next(speech, settings.temperature, settings.top_p, u[:, 1]) + lo
    return torch.where(advance, nxt_ids, codes)


class _HFSteps:
    """HF forward with its growing cache: the reference the fast path is tested against."""

    offset = 0  # logit column j is token id j

    def __init__(self, model):
        self.model = model

    def prefill(self, ids, mask):
        self.mask = mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        self.past = output_cache(out)
        return out.logits[:, -1]

    def step(self, ids):
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        pos = self.mask.sum(-1, keepdim=True) - 1
        out = self.model(input_ids=ids[:, None], attention_mask=self.mask, position_ids=pos, use_cache=True,
                         **cache_kwargs(self.model, self.past))
        self.past = output_cache(out)
        return out.logits[:, -1]


def _decoder(model, vocab, settings: GenerationSettings, batch: int, max_len: int):
    """The decode path: logits come back as columns ``offset..`` of the vocabulary."""
    if settings.decoder == "hf":
        return _HFSteps(model)
    int8 = settings.decoder == "static-int8"
    from spade_tts.decoding import StaticDecoder

    # only speech_end, the phones and the speech codes can follow <speech_start>: the head keeps those rows
    # on a GPU each step is one CUDA-graph replay (launch-bound otherwise); rows then stay in the batch
    dec = StaticDecoder(model, max_batch=batch, max_len=max_len, head_rows=slice(vocab.speech_end, vocab.size),
                        cuda_graphs=model.device.type == "cuda", int8_weights=int8)
    dec.offset = vocab.speech_end
    return dec


@torch.no_grad()
def generate_codes(model, vocab, prompts: list[list[int]], targets: list[list[int]],
                   tokens_per_second: float, settings: GenerationSettings, item_ids: list[int] | None = None,
                   max_codes: list[int] | None = None) -> list[tuple[list[int], int, bool]]:
    """Decode speech codes for a batch; returns (codes, guard hits, truncated) per item.

    ``prompts`` end with ``<speech_start>`` + prompt speech; ``targets`` are the target phone ids
    (the first is forced right away). Prompts are left-padded so that all items step together;
    rows that finish leave the batch (when the decoder can drop them), so one long item does not
    make the others pay for its steps. ``item_ids`` number the items' random streams (default:
    their positions); ``max_codes`` caps each item's length (default: ``max_seconds``).
    """
    device = next(model.parameters()).device
    bsz = len(prompts)
    item_ids = list(range(bsz)) if item_ids is None else list(item_ids)
    first = [p + [t[0]] for p, t in zip(prompts, targets)]
    width = max(len(x) for x in first)
    ids = torch.full((bsz, width), vocab.pad, dtype=torch.long)
    mask = torch.zeros((bsz, width), dtype=torch.long)
    for b, x in enumerate(first):
        ids[b, width - len(x):] = torch.tensor(x)
        mask[b, width - len(x):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pointer = [1] * bsz  # index of the next target phone to force
    frames_in_phone = [0] * bsz
    codes: list[list[int]] = [[] for _ in range(bsz)]
    guard_hits = [0] * bsz
    truncated = [False] * bsz
    max_phone = max(1, int(settings.max_phone_seconds * tokens_per_second))
    max_total = int(settings.max_seconds * tokens_per_second)
    caps = [max_total] * bsz if max_codes is None else [max(1, min(max_total, int(c))) for c in max_codes]
    steps = max_total + max(len(t) for t in targets) + 1
    uniforms = (torch.stack([item_uniforms(settings.seed, i, steps, device) for i in item_ids])
                if settings.temperature > 0 else None)
    dec = _decoder(model, vocab, settings, bsz, width + steps)
    can_drop = settings.drop_finished and hasattr(dec, "keep_rows") and not getattr(dec, "static", True)
    off = dec.offset
    lo, hi = vocab.speech_offset - off, vocab.size - off
    # speech_end sits just before the phones in the vocabulary: one slice covers every move-on token
    move_on = slice(vocab.speech_end - off, vocab.speech_offset - off) if settings.any_move_on else None
    logits = dec.prefill(ids, mask)
    rows = list(range(bsz))  # the items still in the batch, in batch order
    done = [False] * bsz
    step = 0
    while rows:
        nxt_list = [targets[b][pointer[b]] if pointer[b] < len(targets[b]) else vocab.speech_end for b in rows]
        nxt_ids = torch.tensor(nxt_list, device=device)
        u = uniforms[rows, step] if uniforms is not None else None
        choice = (choose_tokens(logits, lo, hi, nxt_ids - off, settings, u, move_on) + off).tolist()
        for j, b in enumerate(rows):
            if done[b]:
                choice[j] = vocab.speech_end  # a finished row still in the batch steps with a known token; ignored
                continue
            if choice[j] >= vocab.speech_offset and frames_in_phone[b] >= max_phone:
                choice[j] = nxt_list[j]  # length guard: this phone has lasted too long
                guard_hits[b] += 1
            if choice[j] >= vocab.speech_offset:
                codes[b].append(choice[j] - vocab.speech_offset)
                frames_in_phone[b] += 1
                if len(codes[b]) >= caps[b]:
                    done[b] = truncated[b] = True
            elif choice[j] == vocab.speech_end:
                done[b] = True
            else:
                pointer[b] += 1
                frames_in_phone[b] = 0
        step += 1
        live = [j for j, b in enumerate(rows) if not done[b]]
        if not live:
            break
        if can_drop and len(live) < len(rows):
            dec.keep_rows(live)
            rows = [rows[j] for j in live]
            choice = [choice[j] for j in live]
        logits = dec.step(torch.tensor(choice, device=device))
    return [(codes[b], guard_hits[b], truncated[b]) for b in range(bsz)]
