"""Forward hooks that record, during one ordinary forward pass, what the distillation terms need.

Hooks rather than ``output_hidden_states`` / ``output_attentions`` because:

* HF's ``hidden_states[-1]`` is taken *after* the final norm, so it is not the last layer's
  output; a hook on each decoder layer gives the raw residual stream of every layer alike;
* ``output_attentions`` needs the eager attention for *all* layers and returns every layer's
  ``B x heads x L x L`` map; here only the matched layers' post-RoPE queries and keys are kept
  (``B x heads x L x head_dim``, as small as a hidden state), and the maps are built from them
  one layer at a time in :func:`spade_tts.distill.losses.attention_map_loss`;
* it works unchanged when the model is wrapped by DDP or FSDP, because the hooks sit on the
  inner modules, which the wrappers call.

Only what an enabled loss term needs is hooked, so a disabled term costs nothing.
"""
from __future__ import annotations

import torch
from torch import nn

from spade_tts.pruning.layers import decoder_layers


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's rotate-half RoPE on ``x`` (B, H, L, D); a shorter ``cos`` rotates only the first dims (partial rotary)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


class Capture:
    """Records the embedding output, chosen layer outputs and chosen layers' attention q/k of ``model``.

    After a forward: ``embeddings`` (B, L, d), ``hidden[i]`` (B, L, d) the raw output of decoder
    layer ``i``, ``qk[i]`` = (q, k), each (B, heads, L, head_dim), after RoPE, keys repeated to
    the query heads (GQA), plus ``scaling[i]``, the softmax scale of that layer.
    """

    def __init__(self, model: nn.Module, hidden_layers=(), attn_layers=(), embeddings: bool = False):
        self.layers = decoder_layers(model)
        self.hidden: dict[int, torch.Tensor] = {}
        self.qk: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.scaling: dict[int, float] = {}
        self.embeddings: torch.Tensor | None = None
        self._handles = []
        if embeddings:
            self._handles.append(model.get_input_embeddings().register_forward_hook(self._on_embeddings))
        for i in sorted(set(hidden_layers)):
            self._handles.append(self.layers[i].register_forward_hook(self._on_layer(i)))
        for i in sorted(set(attn_layers)):
            self._hook_attention(i)

    def _on_embeddings(self, module, args, out):
        self.embeddings = _first(out)

    def _on_layer(self, i: int):
        def hook(module, args, out):
            self.hidden[i] = _first(out)
        return hook

    def _hook_attention(self, i: int) -> None:
        attn = getattr(self.layers[i], "self_attn", None)
        q_mod = getattr(attn, "q_norm", None) or getattr(attn, "q_proj", None)  # Qwen3 normalises q/k before RoPE
        k_mod = getattr(attn, "k_norm", None) or getattr(attn, "k_proj", None)
        head_dim = getattr(attn, "head_dim", None)
        if q_mod is None or k_mod is None or head_dim is None:
            raise ValueError(f"layer {i}'s attention ({type(attn).__name__}) has no q_proj/k_proj/head_dim: the "
                             "attention-map term supports Llama/Qwen/Mistral-style attention; set w_attn=0")
        scaling = getattr(attn, "scaling", head_dim ** -0.5)
        raw: dict[str, torch.Tensor] = {}

        def keep(name):
            def hook(module, args, out):
                raw[name] = out
            return hook

        def before(module, args, kwargs):
            raw["pos"] = kwargs.get("position_embeddings")

        def after(module, args, kwargs, out):
            if raw.get("pos") is None:
                raise ValueError(f"layer {i}'s attention got no position_embeddings (cos, sin); the attention-map "
                                 "term needs an HF model that passes them (transformers >= 4.48); set w_attn=0")
            cos, sin = raw["pos"]
            b, n = raw["q"].shape[:2]
            q = raw["q"].reshape(b, n, -1, head_dim).transpose(1, 2)
            k = raw["k"].reshape(b, n, -1, head_dim).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if k.shape[1] != q.shape[1]:  # grouped-query attention: each key head serves several query heads
                k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            self.qk[i] = (q, k)
            self.scaling[i] = float(scaling)
            raw.clear()

        self._handles += [q_mod.register_forward_hook(keep("q")), k_mod.register_forward_hook(keep("k")),
                          attn.register_forward_pre_hook(before, with_kwargs=True),
                          attn.register_forward_hook(after, with_kwargs=True)]

    def clear(self) -> None:
        """Drop what the last forward recorded (call before the next one, so no graph is kept alive)."""
        self.hidden, self.qk, self.embeddings = {}, {}, None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()
