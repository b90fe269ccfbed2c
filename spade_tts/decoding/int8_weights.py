"""Int8 weight-only matmuls for the CPU decode step (``StaticDecoder(int8_weights=True)``).

At batch 1 a CPU decode step streams every weight from memory once per token; for the built-in
model that is 60 MB of float32 and ~70 % of the step. Storing the projections as int8 with one
scale per output channel reads a quarter of the bytes. PyTorch's hand-vectorised
``_weight_int8pack_mm`` kernel is fast with bfloat16 activations (with float32 or float16 ones it
runs 9-14x slower on this project's AVX2 CPU), so activations are rounded to bfloat16 on the way in
and the product comes back as bfloat16 before it returns to float32. That makes this a lossy
path: logits move by ~1 % of their size, so sampled and even greedy tokens can change.
``docs/decoding.md`` records what it costs in WER and buys in speed. The residual stream, the
norms, the rotary maths, attention and the KV cache stay in float32.
"""
from __future__ import annotations

import torch


def int8_matmul_available() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")


class Int8Weight:
    """A weight used as ``x @ wt`` (``wt`` is ``(in, out)``), stored as int8 rows with bfloat16 scales.

    Symmetric per-output-channel quantization: ``w[o] ~= q[o] * scale[o]`` with ``q`` in
    [-127, 127]; the scale is rounded to bfloat16 first and ``q`` is chosen against the rounded
    scale, so the kernel's product is the nearest one it can form. A copy: later updates of the
    original weight are not seen.
    """

    def __init__(self, wt: torch.Tensor):
        if wt.device.type != "cpu":
            raise ValueError(f"int8 weights are a CPU decode path; the weight is on {wt.device}")
        w = wt.detach().t().float()  # (out, in)
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).to(torch.bfloat16)
        self.q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.scale = scale

    def dequantized(self) -> torch.Tensor:
        """``(in, out)`` float32: the weight this object multiplies by (for tests and error bounds)."""
        return (self.q.float() * self.scale.float()[:, None]).t()

    def mm(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.q, self.scale).to(x.dtype)
        return y if bias is None else y.add_(bias)
