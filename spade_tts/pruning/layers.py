"""Find, skip and remove decoder layers of Hugging Face decoder-only LMs.

Deleting a layer from an HF model breaks three things that users keep tripping over:

* each attention module keeps its ``layer_idx`` and uses it to index the KV cache, so a
  stack with a gap either crashes on the cache or reads another layer's keys;
* ``config.num_hidden_layers`` and per-layer config lists (``layer_types``, Qwen2/Qwen3
  ``max_window_layers``) drive the cache layout, the attention mask of each layer and the
  depth ``from_pretrained`` builds, so a stale config reloads the wrong model or fails;
* ``output_hidden_states``' last entry is *after* the final norm, so it is not the output
  of the last layer (see :func:`residual_stream`).

Skipping (a view, for scoring) and pruning (physical, for saving) share one routine that
swaps the stack for the kept modules and fixes all of the above, so what is measured with
a layer skipped is exactly what a pruned checkpoint computes.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

# Attributes that hold a module's position in the stack (HF attention and some decoder layers).
INDEX_ATTRS = ("layer_idx",)


@dataclass(frozen=True)
class DecoderStack:
    """Where a model's decoder layers live: ``getattr(owner, attr)``, described by ``configs``."""

    owner: nn.Module
    attr: str
    path: str  # dotted name, e.g. "model.layers" or "llm.model.model.layers"
    configs: tuple  # HF configs whose num_hidden_layers counts this stack (usually one object)

    @property
    def layers(self) -> nn.ModuleList:
        return getattr(self.owner, self.attr)

    @property
    def config(self):
        """The HF config that describes the stack, or None for a model without one."""
        return self.configs[0] if self.configs else None


def find_decoder(model: nn.Module) -> DecoderStack:
    """The longest ``nn.ModuleList`` of attention layers in ``model``, with its owner and config.

    A structural rule rather than a list of attribute paths, so wrappers (CosyVoice 2 keeps its
    Qwen2ForCausalLM at ``llm.model``) and new HF architectures work without special cases.
    """
    best_name, best = None, None
    for name, module in model.named_modules():
        if (isinstance(module, nn.ModuleList) and len(module) > 0
                and all(hasattr(child, "self_attn") for child in module)
                and (best is None or len(module) > len(best))):
            best_name, best = name, module
    if best is None:
        raise ValueError(f"no decoder layers found in {type(model).__name__}: expected an nn.ModuleList of layers "
                         "with .self_attn (Llama, Qwen2, Qwen3, Mistral or a module that holds one)")
    owner_name, _, attr = best_name.rpartition(".")
    owner = model.get_submodule(owner_name)
    return DecoderStack(owner, attr, best_name, _configs_along(model, owner_name, len(best)))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of ``model`` (see :func:`find_decoder`)."""
    return find_decoder(model).layers


def _configs_along(model: nn.Module, owner_name: str, depth: int) -> tuple:
    """Configs on the path from ``model`` to the stack's owner that count ``depth`` layers.

    The CausalLM and its inner model usually share one config object; a wrapper or a
    multimodal model may hold it as a text sub-config, hence ``get_text_config``.
    """
    found: dict[int, object] = {}
    module, parts = model, [p for p in owner_name.split(".") if p]
    for step in [None] + parts:
        if step is not None:
            module = getattr(module, step)
        cfg = getattr(module, "config", None)
        for c in (cfg, getattr(cfg, "get_text_config", lambda **_: None)(decoder=True)):
            if c is not None and getattr(c, "num_hidden_layers", None) == depth:
                found.setdefault(id(c), c)
    for c in found.values():
        if getattr(c, "is_heterogeneous", False):
            raise ValueError(f"{type(model).__name__} has a heterogeneous per-layer config (per_layer_config); "
                             "removing layers from it is not supported yet")
    return tuple(found.values())


def _check_kept(keep: Iterable[int], depth: int, what: str) -> list[int]:
    keep = sorted(set(int(i) for i in keep))
    bad = [i for i in keep if not 0 <= i < depth]
    if bad:
        raise ValueError(f"{what}: layer index {bad[0]} is out of range; the model has layers 0..{depth - 1}")
    if not keep:
        raise ValueError(f"{what}: no layer would be left of {depth}; keep at least one")
    return keep


def _drop_generation_caches(model: nn.Module) -> None:
    """Forget static KV caches that ``generate`` keeps between calls (``model._cache`` in transformers 4.x).

    Such a cache is sized for the depth it was made at and is reused without checking it.
    """
    for module in model.modules():
        module.__dict__.pop("_cache", None)


def _restack(stack: DecoderStack, keep: list[int]) -> Callable[[], None]:
    """Make the stack hold only ``keep`` (teacher indices, sorted); return a function that undoes it.

    Every change is recorded before it is made so that undoing restores the model exactly,
    including the same ModuleList object and the same config values.
    """
    old = stack.layers
    undo: list[tuple[object, str, object]] = [(stack.owner, stack.attr, old)]
    new = nn.ModuleList([old[i] for i in keep])
    for new_idx, layer in enumerate(new):
        for module in layer.modules():
            for attr in INDEX_ATTRS:
                value = getattr(module, attr, None)
                if isinstance(value, int) and not isinstance(value, bool):
                    undo.append((module, attr, value))
                    setattr(module, attr, new_idx)
    depth = len(old)
    layer_types = None
    for cfg in stack.configs:
        for key, value in list(vars(cfg).items()):
            # per-layer lists: layer_types, mlp_layer_types, no_rope_layers, ...
            if "layer" in key and isinstance(value, (list, tuple)) and len(value) == depth:
                undo.append((cfg, key, value))
                setattr(cfg, key, type(value)(value[i] for i in keep))
                if key == "layer_types":
                    layer_types = getattr(cfg, key)
        mwl = getattr(cfg, "max_window_layers", None)
        if isinstance(mwl, int) and not isinstance(mwl, bool):
            # Qwen2/Qwen3: layers [0, max_window_layers) use full attention, the rest may slide.
            undo.append((cfg, "max_window_layers", mwl))
            cfg.max_window_layers = sum(1 for i in keep if i < mwl)
        undo.append((cfg, "num_hidden_layers", cfg.num_hidden_layers))
        cfg.num_hidden_layers = len(keep)
    if layer_types is not None and isinstance(getattr(stack.owner, "has_sliding_layers", None), bool):
        undo.append((stack.owner, "has_sliding_layers", stack.owner.has_sliding_layers))
        stack.owner.has_sliding_layers = "sliding_attention" in layer_types
    setattr(stack.owner, stack.attr, new)

    def restore() -> None:
        for obj, attr, value in reversed(undo):
            setattr(obj, attr, value)

    return restore


@contextlib.contextmanager
def skip_layers(model: nn.Module, skip: Iterable[int]) -> Iterator[nn.Module]:
    """Run ``model`` with the layers in ``skip`` bypassed (the residual stream passes through).

    No weight is copied: the kept modules are put in a temporary stack and renumbered, and
    the config is set to the smaller depth, so ``generate`` with a KV cache computes exactly
    what the pruned checkpoint would. Everything is restored on exit, also after an error.
    """
    stack = find_decoder(model)
    depth = len(stack.layers)
    skip = set(int(i) for i in skip)
    bad = [i for i in sorted(skip) if not 0 <= i < depth]
    if bad:
        raise ValueError(f"skip_layers: layer index {bad[0]} is out of range; the model has layers 0..{depth - 1}")
    keep = _check_kept((i for i in range(depth) if i not in skip), depth, "skip_layers")
    _drop_generation_caches(model)
    restore = _restack(stack, keep)
    try:
        yield model
    finally:
        restore()
        _drop_generation_caches(model)


def prune_layers(model: nn.Module, keep: Iterable[int]) -> nn.Module:
    """Remove every decoder layer not in ``keep`` (teacher indices), in place; returns ``model``.

    The kept modules keep their weights; indices and config are renumbered so that
    ``save_pretrained`` + ``from_pretrained`` rebuild the same smaller model.
    """
    stack = find_decoder(model)
    _restack(stack, _check_kept(keep, len(stack.layers), "prune_layers"))
    _drop_generation_caches(model)
    return model


def model_fingerprint(model: nn.Module, samples: int = 256) -> str:
    """A 16-hex-digit digest of a model's weights that costs milliseconds even at 8B.

    It hashes every tensor's name and shape and ``samples`` evenly strided values. Values are
    compared at bfloat16 precision, so the same checkpoint loaded in float32, float16 or
    bfloat16, on any device, gives the same digest, while another checkpoint, a fine-tuned
    one or a pruned one does not.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)};".encode())
        flat = tensor.detach().reshape(-1)
        n = flat.numel()
        if n == 0:
            continue
        k = min(samples, n)
        idx = torch.arange(k, dtype=torch.int64) * (n - 1) // max(k - 1, 1)
        values = flat[idx.to(flat.device)].float().to(torch.bfloat16).float().cpu()
        h.update(values.numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def residual_stream(model: nn.Module, **inputs) -> list[torch.Tensor]:
    """The residual stream entering the first layer and leaving each layer, all before the final norm.

    HF's ``output_hidden_states`` replaces the last layer's output by the final norm's, which
    makes block-influence scores and layer-matched distillation of the last layer wrong; hooks
    on the layers themselves give ``len(layers) + 1`` tensors that all mean the same thing.
    """
    layers = decoder_layers(model)
    captured: list[torch.Tensor] = []

    def first_input(module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])

    def output(module, args, kwargs, out):
        captured.append(out[0] if isinstance(out, tuple) else out)

    handles = [layers[0].register_forward_pre_hook(first_input, with_kwargs=True)]
    handles += [layer.register_forward_hook(output, with_kwargs=True) for layer in layers]
    try:
        model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured
