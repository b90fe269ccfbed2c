"""SPADE's multi-level distillation loss: what the student is taught, term by term.

    L = w_ce * CE + w_logits * KD(logits) + w_latents * MSE(layer outputs)
        + w_attn * MSE(attention maps) + w_emb * MSE(embeddings)

with the paper's weights by default: alpha = 0.25 on CE and (1 - alpha) / 4 on each of the
other four. A weight of 0 switches a term off, and then nothing is hooked or computed for it.

* **CE**: next-token cross-entropy on the labelled (speech) positions, ``labels != -100``.
* **Logit KD** on the same positions, at temperature T (multiplied by T**2 so the gradient
  scale does not depend on T), p = teacher, q = student:

  - ``skew_forward`` (default, DistiLLM, arXiv 2402.03898): KL(p || b p + (1 - b) q), b = 0.1;
    mixing a little of p into the student's distribution keeps the divergence and its
    gradient finite where q ~ 0, which makes early training stable;
  - ``skew_reverse``: KL(q || b q + (1 - b) p);
  - ``forward`` (plain KL(p || q), the b = 0 limit of skew_forward) and ``reverse`` (KL(q || p)).

* **Latents**: MSE between student layer n's raw output and the output of its matched teacher
  layer (see :mod:`spade_tts.distill.matching`), averaged over hidden units, real tokens
  (``attention_mask``, prompt included: the prompt shapes the speech) and matched layers.
* **Attention maps**: for each matched pair of layers, the squared difference of the softmax
  attention probabilities, summed over keys and averaged over heads and real query tokens
  (that is MSE x L; a per-element mean would shrink as 1/L and vanish next to the other terms),
  then averaged over matched layers.
  Memory: a map is heads x L x L float32 per sequence (5 heads, L=1,000: 20 MB; LLaSA-1B, 32
  heads: 128 MB). Only the matched layers are computed, from post-RoPE q/k recorded by hooks,
  never through ``output_attentions``; the maps are built one sequence at a time and only the
  gradients for q and k are kept for backward (:mod:`spade_tts.distill.fused`).
* **Embeddings**: MSE between the student's and the teacher's input-embedding outputs.

Everything is computed in float32 from whatever dtype the models ran in (bf16/fp16 autocast),
so softmax/log-softmax and the KL cannot overflow or underflow in half precision.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spade_tts.distill.fused import FusedAttentionMaps, FusedKD
from spade_tts.distill.hooks import Capture
from spade_tts.pruning.layers import decoder_layers

KD_TYPES = ("skew_forward", "skew_reverse", "forward", "reverse")
ALPHA = 0.25  # SPADE's weight on CE; the other four terms share 1 - ALPHA equally
TERMS = ("ce", "logits", "latents", "attn", "emb")


@dataclass
class LossWeights:
    ce: float = ALPHA
    logits: float = (1 - ALPHA) / 4
    latents: float = (1 - ALPHA) / 4
    attn: float = (1 - ALPHA) / 4
    emb: float = (1 - ALPHA) / 4

    def enabled(self) -> list[str]:
        return [t for t in TERMS if getattr(self, t) != 0]


# ---------------------------------------------------------------------------------------------- terms

def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE of ``logits`` (N, V) against ``targets`` (N,), in float32."""
    return F.cross_entropy(logits.float(), targets)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "skew_forward",
            temperature: float = 1.0, beta: float = 0.1) -> torch.Tensor:
    """Logit distillation between (N, V) logit rows, mean over rows, times temperature**2 (computed a
    slice of rows at a time, gradient included: :class:`spade_tts.distill.fused.FusedKD`)."""
    if kind not in KD_TYPES:
        raise ValueError(f"kd={kind!r} is not one of {', '.join(KD_TYPES)}")
    b = beta if kind.startswith("skew") else 0.0
    return FusedKD.apply(student_logits, teacher_logits.detach(), kind.endswith("forward"), temperature, b)


def masked_mse(a: torch.Tensor, b: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """MSE of (B, L, d) tensors over the last dim and the tokens where ``token_mask`` (B, L) is set."""
    err = (a.float() - b.float().detach()).pow(2).mean(-1)
    m = token_mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1)


def attention_map_loss(student_qk, teacher_qk, attention_mask: torch.Tensor, scale_s: float,
                       scale_t: float) -> torch.Tensor:
    """Attention-map MSE of one matched layer pair, built from post-RoPE (q, k), each (B, H, L, D), one
    sequence at a time; only the gradients for q and k (as small as q and k) are kept for backward
    (:class:`spade_tts.distill.fused.FusedAttentionMaps`)."""
    q_s, k_s = student_qk
    q_t, k_t = teacher_qk
    if q_s.shape != q_t.shape:
        raise ValueError(f"attention shapes differ (student {tuple(q_s.shape)}, teacher {tuple(q_t.shape)}): the "
                         "attention-map term needs a student with the teacher's heads; set w_attn=0")
    return FusedAttentionMaps.apply(q_s, k_s, q_t.detach(), k_t.detach(), attention_mask.bool(), scale_s, scale_t)


# ---------------------------------------------------------------------------------------------- the objective

class DistillLoss:
    """The full objective for one (teacher, student) pair, with the hooks it needs.

    ``match[n]`` is the teacher layer matched to student layer ``n``. Calling it with a batch
    (``input_ids``, ``attention_mask``, ``labels``) runs the frozen teacher without gradients,
    then the student (through ``student_forward``, e.g. the DDP-wrapped model), and returns
    ``(total, terms)`` with every enabled term as a float32 scalar (unweighted) in ``terms``.
    """

    def __init__(self, teacher, student, match: list[int], weights: LossWeights | None = None,
                 kd: str = "skew_forward", temperature: float = 1.0, skew_beta: float = 0.1,
                 student_forward=None, teacher_context=contextlib.nullcontext):
        self.weights = weights or LossWeights()
        if kd not in KD_TYPES:
            raise ValueError(f"kd={kd!r} is not one of {', '.join(KD_TYPES)}")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        if not 0 <= skew_beta < 1:
            raise ValueError(f"skew_beta={skew_beta} must be in [0, 1)")
        self.teacher, self.student = teacher, student
        self.student_forward = student_forward or student
        self.teacher_context = teacher_context
        self.kd, self.temperature, self.skew_beta = kd, temperature, skew_beta
        self.match = [int(t) for t in match]
        n_student = len(decoder_layers(student))
        if len(self.match) != n_student:
            raise ValueError(f"the matching has {len(self.match)} entries but the student has {n_student} layers")
        on = set(self.weights.enabled())
        if not on:
            raise ValueError("every loss weight is 0: enable at least one of w_ce, w_logits, w_latents, w_attn, w_emb")
        student_layers = range(n_student)
        self.s_cap = Capture(student, hidden_layers=student_layers if "latents" in on else (),
                             attn_layers=student_layers if "attn" in on else (), embeddings="emb" in on)
        self.t_cap = Capture(teacher, hidden_layers=self.match if "latents" in on else (),
                             attn_layers=self.match if "attn" in on else (), embeddings="emb" in on)
        self.needs_teacher = bool(on - {"ce"})

    def __call__(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w, on = self.weights, set(self.weights.enabled())
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        self.s_cap.clear()
        self.t_cap.clear()
        t_logits = None
        if self.needs_teacher:
            with torch.no_grad(), self.teacher_context():
                t_logits = self.teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits
        s_logits = self.student_forward(input_ids=ids, attention_mask=mask, use_cache=False).logits

        # Logits at t predict token t+1: both logit terms use the labelled (speech) positions only.
        targets = labels[:, 1:]
        pick = targets != -100
        terms: dict[str, torch.Tensor] = {}
        s_rows = s_logits[:, :-1][pick]
        if "ce" in on:
            terms["ce"] = cross_entropy(s_rows, targets[pick])
        if "logits" in on:
            terms["logits"] = kd_loss(s_rows, t_logits[:, :-1][pick], self.kd, self.temperature, self.skew_beta)
        if "latents" in on:
            terms["latents"] = torch.stack([masked_mse(self.s_cap.hidden[n], self.t_cap.hidden[t], mask)
                                            for n, t in enumerate(self.match)]).mean()
        if "attn" in on:
            terms["attn"] = torch.stack([
                attention_map_loss(self.s_cap.qk[n], self.t_cap.qk[t], mask, self.s_cap.scaling[n],
                                   self.t_cap.scaling[t])
                for n, t in enumerate(self.match)]).mean()
        if "emb" in on:
            terms["emb"] = masked_mse(self.s_cap.embeddings, self.t_cap.embeddings, mask)
        self.s_cap.clear()
        self.t_cap.clear()
        total = sum(getattr(w, name) * value for name, value in terms.items())
        return total, terms

    def close(self) -> None:
        """Remove the hooks (the models then run exactly as before)."""
        self.s_cap.remove()
        self.t_cap.remove()
