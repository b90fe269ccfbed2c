"""The two large distillation terms with their gradients computed in the forward pass, a slice at a time.

Written out by autograd, the logit KD over a 15,000-token vocabulary keeps half a dozen N x V
float32 tensors alive until backward (log-softmaxes, their exponentials, the mixture), and the
attention-map term rebuilds B x heads x L x L maps under checkpointing. On a CPU each of those
tensors is hundreds of MB, allocated fresh (page faults) and streamed from memory several times:
at batch 16 the two terms were 15 of a step's 18 s on 2 cores.

Here each term is a :class:`torch.autograd.Function` whose forward walks over slices (rows of
logits, one sequence's heads) small enough to stay in cache, computes the loss and the
gradient of the slice with respect to the student's input in closed form, and keeps only that
gradient (the size of the input) for backward. The values are those of the formulas in
:mod:`spade_tts.distill.losses`; tests compare loss and gradient with plain autograd.

Gradients, with q = softmax(z) the student's and p the teacher's distribution, for a loss l(q):
dl/dz = q * g - q * sum(q * g), g = dl/dq. For KL(p || b p + (1 - b) q), q * g = -(1 - b) p q / m
(m the mixture; b = 0 gives -p); for KL(q || b q + (1 - b) p), q * g = q (log q - log m) - b q^2 / m.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ROWS_PER_SLICE = 32  # logit rows handled at once: 32 x 15k floats = 2 MB, a cache-sized slice (fastest of 32-512 here)


def log_mix(log_a: torch.Tensor, log_b: torch.Tensor, beta: float) -> torch.Tensor:
    """log(beta * a + (1 - beta) * b), computed from log-probabilities without leaving log space."""
    if beta <= 0:
        return log_b
    if beta >= 1:
        return log_a
    return torch.logaddexp(log_a + math.log(beta), log_b + math.log1p(-beta))


def _kd_slice(s: torch.Tensor, t: torch.Tensor, forward_kl: bool, temperature: float, beta: float,
              want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed divergence of a slice of rows, and d(sum)/d(s) (times temperature**2)."""
    log_q = F.log_softmax(s.float() / temperature, dim=-1)
    log_p = F.log_softmax(t.float() / temperature, dim=-1)
    if forward_kl:  # KL(p || beta p + (1 - beta) q)
        log_m = log_mix(log_p, log_q, beta)
        total = (log_p.exp() * (log_p - log_m)).sum()
        qg = None if not want_grad else (log_p + log_q - log_m).exp_().mul_(-(1 - beta))
    else:  # KL(q || beta q + (1 - beta) p)
        log_m = log_mix(log_q, log_p, beta)
        q = log_q.exp()
        total = (q * (log_q - log_m)).sum()
        qg = None if not want_grad else q * (log_q - log_m) - beta * (2 * log_q - log_m).exp()
    if not want_grad:
        return total * temperature ** 2, None
    q = log_q.exp_()
    grad = qg.sub_(q.mul_(qg.sum(-1, keepdim=True)))  # softmax backward; 1 / temperature from z = s / T
    return total * temperature ** 2, grad.mul_(temperature)


class FusedKD(torch.autograd.Function):
    """Mean over rows of the logit divergence (see :func:`spade_tts.distill.losses.kd_loss`)."""

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, forward_kl: bool, temperature: float, beta: float):
        want_grad = ctx.needs_input_grad[0]
        n = student_logits.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=student_logits.device)
        grad = torch.empty(student_logits.shape, dtype=torch.float32, device=student_logits.device) if want_grad else None
        with _float32(student_logits):
            for i in range(0, n, ROWS_PER_SLICE):
                part, g = _kd_slice(student_logits[i:i + ROWS_PER_SLICE], teacher_logits[i:i + ROWS_PER_SLICE],
                                    forward_kl, temperature, beta, want_grad)
                total += part
                if want_grad:
                    grad[i:i + ROWS_PER_SLICE] = g
        if want_grad:
            ctx.save_for_backward(grad.div_(max(n, 1)))
            ctx.input_dtype = student_logits.dtype
        return total / max(n, 1)

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return (grad * grad_out).to(ctx.input_dtype), None, None, None, None


def _attention_probs(q: torch.Tensor, k: torch.Tensor, scaling: float, allowed: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)  # finite: a fully masked row is no NaN
    return torch.softmax(scores, dim=-1)


def _float32(t: torch.Tensor):
    """Autocast off: the terms are computed in float32 whatever precision the models ran in."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def _attention_row(i, q_s, k_s, q_t, k_t, allowed, keys, scale_s, scale_t, denominator, dq, dk) -> torch.Tensor:
    """Sequence ``i``'s summed squared distance, writing its q and k gradients into ``dq``, ``dk`` (if given)."""
    queries = keys.to(torch.float32)[None, :, None]  # (1, L, 1)
    p_s = _attention_probs(q_s[i], k_s[i], scale_s, allowed)
    p_t = _attention_probs(q_t[i], k_t[i], scale_t, allowed)
    if dq is None:
        return (p_s.sub_(p_t).pow_(2).sum(-1, keepdim=True) * queries).sum()
    diff = p_s - p_t
    total = (diff.pow(2).sum(-1, keepdim=True) * queries).sum()
    g = diff.mul_(2 * queries / denominator)  # d loss / d p_s
    ds = g.sub_((g * p_s).sum(-1, keepdim=True)).mul_(p_s).mul_(scale_s)  # softmax backward, x scale
    dq[i] = ds @ k_s[i].float()
    dk[i] = ds.transpose(-1, -2) @ q_s[i].float()
    return total


class FusedAttentionMaps(torch.autograd.Function):
    """Squared distance of the student's and teacher's attention distributions, summed over keys and
    averaged over heads and real queries, built one sequence at a time from post-RoPE (q, k)."""

    @staticmethod
    def forward(ctx, q_s, k_s, q_t, k_t, keys, scale_s: float, scale_t: float):
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        b, heads, n, _ = q_s.shape
        causal = torch.ones(n, n, dtype=torch.bool, device=q_s.device).tril()
        denominator = max(float(keys.sum()) * heads, 1.0)
        total = torch.zeros((), dtype=torch.float32, device=q_s.device)
        dq, dk = (torch.zeros(q_s.shape, dtype=torch.float32, device=q_s.device),
                  torch.zeros(k_s.shape, dtype=torch.float32, device=q_s.device)) if want_grad else (None, None)
        with _float32(q_s):
            for i in range(b):
                total += _attention_row(i, q_s, k_s, q_t, k_t, causal & keys[i][None, :], keys[i], scale_s, scale_t,
                                        denominator, dq, dk)
        if want_grad:
            ctx.save_for_backward(dq, dk)
            ctx.dtypes = (q_s.dtype, k_s.dtype)
        return total / denominator

    @staticmethod
    def backward(ctx, grad_out):
        dq, dk = ctx.saved_tensors
        return (dq * grad_out).to(ctx.dtypes[0]), (dk * grad_out).to(ctx.dtypes[1]), None, None, None, None, None
