"""A static-KV-cache decoder for Hugging Face decoder-only LMs (Llama, Qwen2, Qwen3, Mistral).

Decoding a small LM one token at a time is bound by per-step overhead, not by arithmetic:
HF ``forward`` rebuilds a 4-D mask, grows a ``DynamicCache`` by concatenation and walks many
layers of Python wrappers at every token. ``StaticDecoder`` runs the same arithmetic on the
same weights with little besides the kernels themselves:

* the KV cache is preallocated, ``(max_batch, kv_heads, max_len, head_dim)`` per layer, and
  each step writes one slot in place;
* rotary cos/sin come from a table built once with the model's own rotary module (so every
  rope type whose frequencies do not depend on the sequence length is exact: default, linear,
  llama3, yarn, ...);
* the key-padding mask is a preallocated boolean buffer; a step attends through a view of it;
* the weights are the model's own tensors (``nn.Linear.weight``/``bias`` and the RMSNorm
  weights), called through ``torch.nn.functional``: nothing is copied, so in-place updates of
  the model's weights are seen by the decoder;
* attention is ``torch.nn.functional.scaled_dot_product_attention``; for one new token the
  query heads that share a KV head are folded into the query-length axis, so grouped-query
  attention needs no ``repeat_kv`` copy and no ``enable_gqa`` (torch 2.4 has none);
* optionally the output head is restricted to some rows (``head_rows``, e.g. the speech
  tokens), which for a TTS LM with a large text vocabulary removes most of the head's bytes.

The decoder reads the model's layer list **when it is constructed**: ``model.model.layers``
cut to ``config.num_hidden_layers``, exactly the layers HF ``forward`` runs. A caller that
swaps ``model.model.layers`` for a subset (layer skipping) gets the skipped model by building
the decoder while the subset is in place; swapping later does not change a decoder that
already exists. Build a new decoder after replacing any module or ``Parameter`` object.

Left-padded batches are supported (``prefill``): positions are ``cumsum(mask) - 1`` and padded
keys stay masked for the whole generation. ``extend`` feeds several tokens per row in one forward
and ``rewind`` forgets the last ones (speculative decoding's verify and rollback, tested against
plain steps). Everything runs under ``torch.inference_mode``.
Inference semantics only: dropout is never applied, whatever ``model.training`` says.
"""
from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from spade_tts.decoding.int8_weights import Int8Weight, int8_matmul_available

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
_MAX_HEAD_RUNS = 16  # head_rows made of at most this many contiguous runs use views of the head
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _rms_fn(dtype: torch.dtype):
    """RMSNorm with HF's rounding: fp32 statistics, cast back, then times the weight."""
    if dtype == torch.float32:
        def rms(x, w, eps):
            return F.rms_norm(x, (x.shape[-1],), w, eps)  # same ops as HF's in float32, fused in C++
    else:
        def rms(x, w, eps):
            h = x.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
            return w * h.to(x.dtype)
    return rms


def _norm_params(mod: nn.Module, what: str) -> tuple[torch.Tensor, float]:
    eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
    if eps is None or not isinstance(getattr(mod, "weight", None), torch.Tensor) or "RMSNorm" not in type(mod).__name__:
        raise ValueError(f"{what} is a {type(mod).__name__}, not an RMSNorm with weight and variance_epsilon")
    return mod.weight, float(eps)


def _linear_params(mod: nn.Module, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(mod, nn.Linear) or type(mod).forward is not nn.Linear.forward:
        raise ValueError(f"{what} is a {type(mod).__name__}; StaticDecoder calls plain nn.Linear weights "
                         "(merge adapters or dequantize first)")
    return mod.weight.t(), mod.bias  # a transposed view of the model's own weight


def _mm(x: torch.Tensor, wt: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, wt.t(), b)`` for 2-D ``x``, minus F.linear's per-call transpose (the ops it runs)."""
    if type(wt) is Int8Weight:
        return wt.mm(x, b)
    return torch.mm(x, wt) if b is None else torch.addmm(b, x, wt)


def _head_runs(rows: torch.Tensor) -> list[tuple[int, int]]:
    """Split ids into maximal runs of consecutive increasing ids: [(start, stop), ...]."""
    ids = rows.tolist()
    runs, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            runs.append((ids[start], ids[i - 1] + 1))
            start = i
    return runs


class StaticDecoder:
    """Greedy/sampling-agnostic decode engine: ``prefill`` a left-padded batch, then ``step``.

    ``StaticDecoder(model, max_batch, max_len, head_rows=None, dtype=None, compile=False)``

    * ``model``: a ``*ForCausalLM`` of type llama, qwen2, qwen3 or mistral (its current layer
      list is read now, see the module docstring).
    * ``max_batch``, ``max_len``: the KV cache holds ``max_batch`` rows of ``max_len`` slots;
      a prompt of width ``S`` (padding included) leaves ``max_len - S`` steps.
    * ``head_rows``: ``None`` (full vocabulary), a ``slice`` of token ids, or a 1-D tensor/list of
      distinct token ids. The logits returned by ``prefill``/``step`` then have one column per
      row, in the order given: column ``j`` is token ``token_ids(j)`` (``self.vocab_ids[j]``).
      Each column equals the corresponding column of the full logits (it is the same dot
      product with the same head row), so greedy over the columns equals greedy of the full
      model restricted to those tokens, and sampling samples from the restriction. Ids that
      form at most 16 runs of consecutive ids use views of the head (no copy); other sets
      use a gathered copy of those rows taken now (later weight updates are not seen).
    * ``dtype``: dtype of the KV cache and rope tables; it must equal the model's (convert the
      model first); ``None`` takes the model's.
    * ``compile``: wrap ``step`` in ``torch.compile`` (inductor fuses the elementwise ops of a
      layer, so a step launches a few kernels per layer instead of ~45); implies
      ``static_shapes``. Alone it uses ``mode="reduce-overhead"`` (torch's own CUDA graphs);
      with ``cuda_graphs`` it compiles without them and this class captures the compiled step.
      If compiling fails the decoder warns once and goes on uncompiled. ``compile_kwargs``
      replaces the arguments given to ``torch.compile``.
    * ``cuda_graphs``: capture the step once per batch size in a ``torch.cuda.CUDAGraph`` and
      replay it: one launch per token instead of one per kernel, which is what decoding a
      1B model at batch 1 is bound by (HF eager: ~15 us of Python per kernel). Needs the model
      on a CUDA device; implies ``static_shapes``. Capture takes milliseconds (no compiling),
      so it suits scoring, which builds a decoder per skipped layer.
    * ``fuse_projections``: one matmul for q/k/v and one for gate/up in each decode step, from
      concatenated copies of those weights made now (extra memory: those weights once more;
      later weight updates are not seen). Three fewer matmul launches per layer, which is what
      a small-hidden model such as CosyVoice 2's LM (896 wide) spends its step on. Same
      arithmetic, so logits match to rounding.
    * ``int8_weights``: decode steps multiply by int8 copies of the projection and head weights
      (one bfloat16 scale per output channel, activations rounded to bfloat16 for the product;
      ``spade_tts.decoding.int8_weights``). CPU only (eager or compiled). A quarter of the weight bytes
      per token, which is what a batch-1 CPU step is bound by; lossy (logits move by ~1 %), so
      it is an opt-in for synthesis and never used by scoring. ``prefill`` still runs the float
      weights through the layers (the prompt's KV cache is exact); its logits use the int8 head.
    * ``static_shapes``: steps attend over the whole ``max_len`` cache through the mask (the
      fixed shapes CUDA graphs need) instead of over a view of the filled slots. Slower on CPU;
      defaults to ``compile or cuda_graphs``.
    * ``compile_any_length``: the eager step (a view of the filled slots) compiled by inductor with
      dynamic shapes, for the CPU: one compile per process and model shape (about a minute), which
      every later decoder reuses whatever its cache length, position or batch, where ``compile``
      fixes the cache length (a step attends over all ``max_len`` slots) and compiles each decoder
      anew. Not with ``compile``, ``cuda_graphs`` or ``static_shapes``. Same arithmetic in fused
      kernels: logits match the eager step to rounding (to bfloat16 rounding with int8 weights).
    """

    def __init__(self, model: nn.Module, max_batch: int, max_len: int,
                 head_rows: slice | torch.Tensor | list[int] | None = None, dtype: torch.dtype | None = None,
                 compile: bool = False, static_shapes: bool | None = None, compile_kwargs: dict | None = None,
                 cuda_graphs: bool = False, fuse_projections: bool = False, int8_weights: bool = False,
                 compile_any_length: bool = False):
        cfg = model.config
        mtype = getattr(cfg, "model_type", None)
        if mtype not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"StaticDecoder supports model types {', '.join(SUPPORTED_MODEL_TYPES)}, not {mtype!r}")
        if int(max_batch) < 1 or int(max_len) < 1:
            raise ValueError(f"max_batch and max_len must be positive, got {max_batch} and {max_len}")
        self.max_batch, self.max_len = int(max_batch), int(max_len)
        base = model.model
        embed = base.embed_tokens.weight
        self.device, self.dtype = embed.device, embed.dtype
        if dtype is not None and dtype != self.dtype:
            raise ValueError(f"dtype={dtype} but the model's weights are {self.dtype}; "
                             f"convert the model first (model.to({dtype}))")
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, not {self.device}; "
                             "move it with model.to('cuda') or leave cuda_graphs off")
        if int8_weights:
            if self.device.type != "cpu":  # (cuda_graphs on a CPU model was refused just above)
                raise ValueError(f"int8_weights=True is a CPU path and the model is on {self.device}; "
                                 "keep the model on the CPU or leave int8_weights off")
            if not int8_matmul_available():
                raise ValueError(f"int8_weights=True needs torch._weight_int8pack_mm (torch >= 2.4); this is {torch.__version__}")
        self.static = bool(compile or cuda_graphs) if static_shapes is None else bool(static_shapes)
        if compile_any_length and (compile or cuda_graphs or self.static):
            raise ValueError("compile_any_length=True compiles the eager step (any cache length); it does not combine "
                             "with compile, cuda_graphs or static_shapes=True")
        if cuda_graphs and not self.static:
            raise ValueError("cuda_graphs=True needs static_shapes=True (a graph replays fixed shapes)")
        self._rms = _rms_fn(self.dtype)
        self._embed = embed
        self._final_norm = _norm_params(base.norm, "model.norm")

        layers = list(base.layers)[: cfg.num_hidden_layers]
        if not layers:
            raise ValueError("the model has no decoder layers")
        self.num_layers = len(layers)
        n_heads = cfg.num_attention_heads
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        layer_types = getattr(cfg, "layer_types", None)
        self._layers = []
        self._caches = []
        with torch.inference_mode(False), torch.no_grad():
            for i, layer in enumerate(layers):
                attn, mlp = layer.self_attn, layer.mlp
                hd = attn.head_dim
                wq, bq = _linear_params(attn.q_proj, f"layer {i} q_proj")
                wk, bk = _linear_params(attn.k_proj, f"layer {i} k_proj")
                wv, bv = _linear_params(attn.v_proj, f"layer {i} v_proj")
                wo, bo = _linear_params(attn.o_proj, f"layer {i} o_proj")
                if wq.shape[1] != n_heads * hd or wk.shape[1] != n_kv * hd:
                    raise ValueError(f"layer {i}: projections do not match {n_heads} heads / {n_kv} KV heads of {hd}")
                qn = _norm_params(attn.q_norm, f"layer {i} q_norm") if hasattr(attn, "q_norm") else None
                kn = _norm_params(attn.k_norm, f"layer {i} k_norm") if hasattr(attn, "k_norm") else None
                act = F.silu if cfg.hidden_act in ("silu", "swish") else mlp.act_fn
                window = None  # HF picks the mask by the layer's position in the list, so do we
                if mtype == "mistral":
                    window = getattr(cfg, "sliding_window", None)
                elif layer_types is not None and layer_types[i] == "sliding_attention":
                    window = getattr(cfg, "sliding_window", None)
                if window is not None and window >= self.max_len:
                    window = None  # never reached: no effect
                k_cache = torch.zeros(self.max_batch, n_kv, self.max_len, hd, dtype=self.dtype, device=self.device)
                v_cache = torch.zeros_like(k_cache)
                self._caches.append((k_cache, v_cache))
                self._layers.append((
                    _norm_params(layer.input_layernorm, f"layer {i} input_layernorm"),
                    wq, bq, wk, bk, wv, bv, wo, bo, qn, kn,
                    _norm_params(layer.post_attention_layernorm, f"layer {i} post_attention_layernorm"),
                    *_linear_params(mlp.gate_proj, f"layer {i} gate_proj"),
                    *_linear_params(mlp.up_proj, f"layer {i} up_proj"),
                    *_linear_params(mlp.down_proj, f"layer {i} down_proj"),
                    act, window, n_heads, n_kv, hd, float(attn.scaling)))
            self._fused = [self._fuse(layer) if fuse_projections else None for layer in self._layers]
            self.head_dim = self._layers[0][-2]
            self._windows = sorted({lay[-5] for lay in self._layers if lay[-5] is not None})

            # rotary tables from the model's own rotary module; the first half of sin is negated so
            # that rotate_half(x) * sin == roll(x, half) * sin_signed, bit for bit
            rope = base.rotary_emb
            rope_type = getattr(rope, "rope_type", "default")
            if rope_type in _LENGTH_DEPENDENT_ROPE and self.max_len > getattr(rope, "original_max_seq_len", 0):
                raise ValueError(f"rope type {rope_type!r} changes with the sequence length past "
                                 f"{getattr(rope, 'original_max_seq_len', '?')} tokens; use max_len <= that")
            positions = torch.arange(self.max_len, device=self.device)[None]
            cos, sin = rope(torch.zeros(1, 1, self.head_dim, dtype=self.dtype, device=self.device), positions)
            if cos.shape[-1] != self.head_dim:
                raise ValueError(f"partial rotary embeddings ({cos.shape[-1]} of {self.head_dim} dims) are not supported")
            self._cos = cos[0].to(self.dtype).contiguous()
            self._sin = sin[0].to(self.dtype).clone()
            self._sin[:, : self.head_dim // 2].neg_()

            self._pos = torch.zeros(self.max_batch, dtype=torch.long, device=self.device)
            # additive key mask, 0 where a key may be seen and -inf where not (padding; in static mode also
            # the slots not written yet): SDPA on CPU runs ~1.5x faster with it than with a boolean mask
            self._key_bias = torch.zeros(self.max_batch, self.max_len, dtype=self.dtype, device=self.device)
            self._slot = torch.zeros(1, dtype=torch.long, device=self.device)
            self._arange = torch.arange(self.max_len, device=self.device)
            self._setup_head(model, cfg, head_rows)
            self._step_layers = self._layers
            if int8_weights:
                self._quantize()
        self._batch = 0  # rows of the current generation; 0 before prefill
        self._t = 0  # filled cache slots
        self._prompt_len = 0
        self._compiled = None
        self._graphs = {} if cuda_graphs else None  # batch size -> (graph, ids buffer, logits buffer)
        self._graph_pool = None
        if compile:
            self._setup_compile(compile_kwargs, cuda_graphs)
        shared = _any_length_step() if compile_any_length and hasattr(torch, "compile") else None
        self._any_length = shared if shared is not None and not shared.failed else None

    @staticmethod
    def _fuse(layer):
        """(q|k|v weight, its bias, gate|up weight, its bias): column-concatenated copies."""
        _, wq, bq, wk, bk, wv, bv, _, _, _, _, _, wg, bg, wu, bu = layer[:16]

        def cat(*ts):
            return None if ts[0] is None else torch.cat(ts, dim=-1).contiguous()
        return cat(wq, wk, wv), cat(bq, bk, bv), cat(wg, wu), cat(bg, bu)

    _WEIGHT_SLOTS = (1, 3, 5, 7, 12, 14, 16)  # wq, wk, wv, wo, wg, wu, wd in a layer tuple

    def _quantize(self):
        """Int8 copies of every decode-step weight (the float ones stay for ``prefill``'s layers)."""
        def q8(w):
            return None if w is None else Int8Weight(w)
        self._step_layers = [tuple(q8(v) if i in self._WEIGHT_SLOTS else v for i, v in enumerate(layer))
                             for layer in self._layers]
        self._fused = [None if f is None else (q8(f[0]), f[1], q8(f[2]), f[3]) for f in self._fused]
        self._head = [(q8(wt), b) for wt, b in self._head]

    # ------------------------------------------------------------------ output head
    def _setup_head(self, model, cfg, head_rows):
        head = model.get_output_embeddings()
        wt, b = _linear_params(head, "lm_head")
        w = wt.t()  # (vocab, hidden): the head's own weight
        vocab = w.shape[0]
        self.vocab_size = vocab
        if head_rows is None:
            self.vocab_ids = None
            self._head = [(wt, b)]
            self.num_columns = vocab
            return
        if isinstance(head_rows, slice):
            rng = range(vocab)[head_rows]
            if len(rng) == 0:
                raise ValueError(f"head_rows {head_rows} selects no token of the {vocab}-token vocabulary")
            rows = torch.arange(rng.start, rng.stop, rng.step, device=self.device)
        else:
            rows = torch.as_tensor(head_rows, dtype=torch.long, device=self.device).reshape(-1)
            if rows.numel() == 0:
                raise ValueError("head_rows is empty")
            if int(rows.min()) < 0 or int(rows.max()) >= vocab:
                raise ValueError(f"head_rows must be token ids in [0, {vocab}), got {int(rows.min())}..{int(rows.max())}")
            if rows.unique().numel() != rows.numel():
                raise ValueError("head_rows has repeated token ids")
        runs = _head_runs(rows)
        if len(runs) <= _MAX_HEAD_RUNS:
            self._head = [(w[a:z].t(), None if b is None else b[a:z]) for a, z in runs]  # views
        else:
            self._head = [(w.index_select(0, rows).t(), None if b is None else b.index_select(0, rows))]
        self.vocab_ids = rows
        self.num_columns = rows.numel()
        self._columns = None

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        if len(self._head) == 1:
            return _mm(h, *self._head[0])
        return torch.cat([_mm(h, wt, b) for wt, b in self._head], dim=-1)

    def token_ids(self, columns: torch.Tensor) -> torch.Tensor:
        """Token ids of logit columns (identity without ``head_rows``)."""
        return columns if self.vocab_ids is None else self.vocab_ids[columns]

    def columns(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Logit columns of token ids; -1 where a token is not in ``head_rows``."""
        if self.vocab_ids is None:
            return token_ids
        if self._columns is None:
            self._columns = torch.full((self.vocab_size,), -1, dtype=torch.long, device=self.device)
            self._columns[self.vocab_ids] = torch.arange(self.num_columns, device=self.device)
        return self._columns[token_ids]

    def full_logits(self, logits: torch.Tensor, fill: float = float("-inf")) -> torch.Tensor:
        """Scatter trimmed logits (..., num_columns) into the full vocabulary, ``fill`` elsewhere."""
        if self.vocab_ids is None:
            return logits
        out = logits.new_full((*logits.shape[:-1], self.vocab_size), fill)
        out[..., self.vocab_ids] = logits
        return out

    # ------------------------------------------------------------------ decoding
    @staticmethod
    def _rope(x, cos, sin, half):
        return x * cos + x.roll(half, -1) * sin

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run a left-padded prompt batch ``(B, S)``; returns the logits of its last position ``(B, V')``.

        Starts a new generation: the cache of any earlier one is dropped.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        bsz, width = input_ids.shape
        if bsz > self.max_batch:
            raise ValueError(f"batch of {bsz} rows exceeds max_batch={self.max_batch}; "
                             "build the decoder with a larger max_batch")
        if width > self.max_len:
            raise ValueError(f"prompt of {width} tokens exceeds max_len={self.max_len}; "
                             "build the decoder with a larger max_len")
        if width == 0:
            raise ValueError("empty prompt")
        input_ids = input_ids.to(self.device)
        if attention_mask is None:
            mask = torch.ones(bsz, width, dtype=torch.bool, device=self.device)
        else:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match "
                                 f"input_ids {tuple(input_ids.shape)}")
            mask = attention_mask.to(self.device).bool()
            if not bool(mask[:, -1].all()) or bool((mask[:, :-1] & ~mask[:, 1:]).any()):
                raise ValueError("attention_mask must be left-padded (zeros then ones in every row, last column all ones)")
        with torch.inference_mode():
            return self._prefill(input_ids, mask)

    def _prefill(self, ids, mask):
        bsz, width = ids.shape
        rms = self._rms
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        self._key_bias[:bsz, :width].masked_fill_(~mask, float("-inf")).masked_fill_(mask, 0.0)
        self._key_bias[:bsz, width:] = float("-inf") if self.static else 0.0  # eager steps slice to the filled slots
        self._pos[:bsz] = pos[:, -1] + 1
        self._slot.fill_(width)
        self._batch, self._t, self._prompt_len = bsz, width, width
        self._has_pad = not bool(mask.all())
        self._pos_b = self._pos[:bsz]
        self._mask_b = self._key_bias[:bsz, None, None, :]
        self._caches_b = [(k[:bsz], v[:bsz]) for k, v in self._caches]

        ar = torch.arange(width, device=self.device)
        rel = ar[:, None] - ar[None, :]  # query index - key index
        eye = rel == 0
        masks = {None: None}
        if self._has_pad or self._windows:
            base = (rel >= 0)[None] & mask[:, None, :] | eye  # a padded query sees itself: no empty softmax row
            masks[None] = base[:, None]
            for w in self._windows:
                masks[w] = (base & (rel < w))[:, None]
        x = self._block(ids, pos, 0, masks)
        return self._logits(rms(x[:, -1], *self._final_norm))

    def _block(self, ids, pos, t0, masks):
        """Hidden states after every layer for ``ids`` (B, n) at positions ``pos`` (B, n), written to
        cache slots [t0, t0 + n); from t0 > 0 on the queries also attend to the slots before.
        ``masks``: the attention mask per sliding window (None: all layers without one)."""
        bsz, n = ids.shape
        rms, half = self._rms, self.head_dim // 2
        cos = self._cos[pos].unsqueeze(1)  # (B, 1, n, D)
        sin = self._sin[pos].unsqueeze(1)
        x = F.embedding(ids, self._embed)
        for (kv, layer) in zip(self._caches_b, self._layers):
            ((nw, neps), wq, bq, wk, bk, wv, bv, wo, bo, qn, kn, (pw, peps),
             wg, bg, wu, bu, wd, bd, act, window, nh, nkv, hd, scale) = layer
            h = rms(x, nw, neps)
            q = F.linear(h, wq.t(), bq).view(bsz, n, nh, hd)
            k = F.linear(h, wk.t(), bk).view(bsz, n, nkv, hd)
            v = F.linear(h, wv.t(), bv).view(bsz, n, nkv, hd).transpose(1, 2)
            if qn is not None:
                q = rms(q, *qn)
            if kn is not None:
                k = rms(k, *kn)
            q = self._rope(q.transpose(1, 2), cos, sin, half)
            k = self._rope(k.transpose(1, 2), cos, sin, half)
            kv[0][:, :, t0:t0 + n] = k
            kv[1][:, :, t0:t0 + n] = v
            if t0:
                k, v = kv[0][:, :, :t0 + n], kv[1][:, :, :t0 + n]
            if nh != nkv:
                k = k.repeat_interleave(nh // nkv, dim=1)
                v = v.repeat_interleave(nh // nkv, dim=1)
            m = masks[window]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=m is None, scale=scale)
            x = x + F.linear(a.transpose(1, 2).reshape(bsz, n, nh * hd), wo.t(), bo)
            h = rms(x, pw, peps)
            x = x + F.linear(act(F.linear(h, wg.t(), bg)) * F.linear(h, wu.t(), bu), wd.t(), bd)
        return x

    def extend(self, next_ids: torch.Tensor) -> torch.Tensor:
        """Feed ``n`` tokens per row at once ``(B, n)``; returns the logits after each ``(B, n, V')``.

        What speculative decoding verifies a draft with: one forward over the n tokens costs about
        one step on hardware bound by reading the weights, and its logits equal n steps' to
        rounding. Eager (no graph or compiled step) and through the float layers, as ``prefill``;
        with ``int8_weights`` the logits come from the int8 head, as ``prefill``'s do.
        """
        bsz, t = self._batch, self._t
        if bsz == 0:
            raise RuntimeError("call prefill() before extend()")
        if next_ids.dim() != 2 or next_ids.shape[0] != bsz or next_ids.shape[1] < 1:
            raise ValueError(f"next_ids must have shape ({bsz}, n >= 1), got {tuple(next_ids.shape)}")
        n = next_ids.shape[1]
        if t + n > self.max_len:
            raise ValueError(f"KV cache full: {t} of max_len={self.max_len} slots used, {n} more asked; "
                             "build the decoder with a larger max_len")
        with torch.inference_mode():
            ar = torch.arange(n, device=self.device)
            pos = self._pos[:bsz, None] + ar
            self._key_bias[:bsz, t:t + n] = 0.0  # (static mode keeps unwritten slots masked)
            slot = torch.arange(t + n, device=self.device)
            query_slot = (t + ar)[:, None]
            causal = torch.zeros(n, t + n, dtype=self.dtype, device=self.device).masked_fill_(
                slot[None] > query_slot, float("-inf"))
            base = self._key_bias[:bsz, None, None, :t + n] + causal
            masks = {None: base}
            for w in self._windows:
                masks[w] = base.masked_fill(slot[None] <= query_slot - w, float("-inf"))
            x = self._block(next_ids.to(self.device), pos, t, masks)
            self._pos[:bsz] += n
            self._slot.add_(n)
            self._t = t + n
            return self._logits(self._rms(x, *self._final_norm).reshape(bsz * n, -1)).view(bsz, n, -1)

    def rewind(self, tokens: int) -> None:
        """Forget the last ``tokens`` fed tokens of every row (a rejected draft): the next step or
        extend continues as if they had never come. Prompt tokens cannot be forgotten."""
        tokens = int(tokens)
        if tokens < 0 or tokens > self._t - self._prompt_len:
            raise ValueError(f"rewind({tokens}): between 0 and the {self._t - self._prompt_len} tokens fed since "
                             "prefill")
        if tokens == 0:
            return
        t = self._t - tokens
        with torch.inference_mode():
            self._pos[: self._batch] -= tokens
            self._slot.sub_(tokens)
            if self.static:
                self._key_bias[: self._batch, t:self._t] = float("-inf")
        self._t = t

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ``(B,)`` (full-vocabulary ids, on the decoder's device); returns the
        next logits ``(B, V')``."""
        bsz = self._batch
        if bsz == 0:
            raise RuntimeError("call prefill() before step()")
        t = self._t
        if t >= self.max_len:
            raise ValueError(f"KV cache full: max_len={self.max_len} slots hold the {self._prompt_len}-token prompt and "
                             f"{t - self._prompt_len} steps; build the decoder with a larger max_len")
        if next_ids.shape != (bsz,):
            raise ValueError(f"next_ids must have shape ({bsz},), got {tuple(next_ids.shape)}")
        self._t = t + 1
        if self._graphs is not None:
            return self._step_graphed(next_ids)
        if self._compiled is not None:
            out = self._step_compiled(next_ids)
            if out is not None:
                return out
        with torch.inference_mode():
            if self._any_length is not None:
                try:
                    return self._any_length.fn(self, next_ids, t)
                except Exception as exc:  # noqa: BLE001 - compiling failed; tracing runs on fake tensors, state is intact
                    self._any_length.failed, self._any_length = True, None
                    _warn_compile_failed(exc, "decoding uncompiled from now on", 2)
            return self._decode_one(next_ids, t)

    def keep_rows(self, rows: torch.Tensor | list[int]) -> None:
        """Go on with only ``rows`` of the batch (in that order): row j becomes old row ``rows[j]``.

        A batch steps until its longest item ends, so rows that finished early would keep
        costing a full row of every matmul and attention read; dropping them as they finish makes
        a batch of mixed lengths cost about what its items cost one by one. The next ``step``
        takes one token per kept row. Eager mode only (a compiled step has fixed shapes).
        """
        if self.static:
            raise ValueError("keep_rows needs static_shapes=False (a compiled step has a fixed batch)")
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device).reshape(-1)
        n = rows.numel()
        if n == 0 or int(rows.min()) < 0 or int(rows.max()) >= self._batch or rows.unique().numel() != n:
            raise ValueError(f"keep_rows needs distinct row numbers in [0, {self._batch}), got {rows.tolist()}")
        t = self._t
        with torch.inference_mode():
            for k, v in self._caches:
                k[:n, :, :t] = k[rows, :, :t]  # advanced indexing copies first: no overlap hazard
                v[:n, :, :t] = v[rows, :, :t]
            self._pos[:n] = self._pos[rows]
            self._key_bias[:n] = self._key_bias[rows]
        self._batch = n
        self._pos_b = self._pos[:n]
        self._mask_b = self._key_bias[:n, None, None, :]
        self._caches_b = [(k[:n], v[:n]) for k, v in self._caches]

    def _decode_one(self, ids, t):
        """One token per row. Eager: attend over a view of slots [lo, t]; static: over all slots."""
        bsz, static, rms = self._batch, self.static, self._rms
        if static:  # views made here from the (static-address) buffers, so a compiled graph owns them
            pos, mask_b = self._pos[:bsz], self._key_bias[:bsz, None, None, :]
            caches = [(k[:bsz], v[:bsz]) for k, v in self._caches]
        else:
            pos, caches, mask_b = self._pos_b, self._caches_b, self._mask_b
        x = F.embedding(ids, self._embed)
        cos = self._cos.index_select(0, pos).view(bsz, 1, -1)
        sin = self._sin.index_select(0, pos).view(bsz, 1, -1)
        pos.add_(1)
        half = self.head_dim // 2
        if static:
            slot = self._slot
            self._key_bias[:bsz].index_fill_(1, slot, 0.0)
            masks = {None: mask_b}
            for w in self._windows:
                masks[w] = mask_b.masked_fill(self._arange <= slot - w, float("-inf"))
        else:
            end = t + 1
            full_mask = mask_b[..., :end] if self._has_pad else None
        for (kc, vc), layer, fused in zip(caches, self._step_layers, self._fused):
            ((nw, neps), wq, bq, wk, bk, wv, bv, wo, bo, qn, kn, (pw, peps),
             wg, bg, wu, bu, wd, bd, act, window, nh, nkv, hd, scale) = layer
            h = rms(x, nw, neps)
            if fused is None:
                q = _mm(h, wq, bq).view(bsz, nh, hd)
                k = _mm(h, wk, bk).view(bsz, nkv, hd)
                v = _mm(h, wv, bv).view(bsz, nkv, hd)
            else:
                qkv = _mm(h, fused[0], fused[1])
                q = qkv[:, : nh * hd].view(bsz, nh, hd)
                k = qkv[:, nh * hd: (nh + nkv) * hd].view(bsz, nkv, hd)
                v = qkv[:, (nh + nkv) * hd:].view(bsz, nkv, hd)
            if qn is not None:
                q = rms(q, *qn)
            if kn is not None:
                k = rms(k, *kn)
            q = q * cos + q.roll(half, -1) * sin
            if static:
                k = k * cos + k.roll(half, -1) * sin
                kc.index_copy_(2, slot, k.unsqueeze(2))
                vc.index_copy_(2, slot, v.unsqueeze(2))
                keys, values, m = kc, vc, masks[window]
            else:
                kc.narrow(2, t, 1).copy_((k * cos + k.roll(half, -1) * sin).unsqueeze(2))
                vc.narrow(2, t, 1).copy_(v.unsqueeze(2))
                if window is None:
                    keys, values, m = kc[:, :, :end], vc[:, :, :end], full_mask
                else:
                    lo = max(0, end - window)
                    keys, values = kc[:, :, lo:end], vc[:, :, lo:end]
                    m = mask_b[..., lo:end] if self._has_pad else None
            # heads sharing a KV head ride along the query-length axis: (B, kv_heads, group, D)
            a = F.scaled_dot_product_attention(q.view(bsz, nkv, nh // nkv, hd), keys, values, attn_mask=m, scale=scale)
            x = x + _mm(a.reshape(bsz, nh * hd), wo, bo)
            h = rms(x, pw, peps)
            if fused is None:
                x = x + _mm(act(_mm(h, wg, bg)) * _mm(h, wu, bu), wd, bd)
            else:
                gu = _mm(h, fused[2], fused[3])
                inner = gu.shape[-1] // 2
                x = x + _mm(act(gu[:, :inner]) * gu[:, inner:], wd, bd)
        if static:
            self._slot.add_(1)
        return self._logits(rms(x, *self._final_norm))

    # ------------------------------------------------------------------ torch.compile / CUDA graphs
    def _setup_compile(self, compile_kwargs, cuda_graphs=False):
        if not self.static:
            raise ValueError("compile=True needs static_shapes=True")
        if not hasattr(torch, "compile"):
            warnings.warn("torch.compile is not available; StaticDecoder runs uncompiled", stacklevel=3)
            return
        _raise_recompile_limits()
        mark = getattr(torch._dynamo, "mark_static_address", None)
        if mark is not None:  # mutated in place by the step: CUDA graphs must keep their addresses
            for k, v in self._caches:
                mark(k)
                mark(v)
            for t in (self._pos, self._key_bias, self._slot, self._cos, self._sin, self._arange):
                mark(t)
        default = {"fullgraph": True} if cuda_graphs else {"mode": "reduce-overhead", "fullgraph": True}
        self._compiled = torch.compile(self._decode_static, **(compile_kwargs if compile_kwargs is not None else default))

    def _decode_static(self, ids):
        return self._decode_one(ids, 0)

    def _step_compiled(self, ids):
        """The compiled step; None (after one warning) when compiling failed, to fall back to eager."""
        try:
            mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
            if mark_step is not None:
                mark_step()
            with torch.no_grad():
                # CUDA graphs reuse their output buffer at the next replay: hand out a copy
                return self._compiled(ids).clone()
        except Exception as exc:  # noqa: BLE001 - compiling failed; tracing runs on fake tensors, state is intact
            self._compiled = None
            _warn_compile_failed(exc, "decoding uncompiled", 3)
            return None


    def _step_graphed(self, ids):
        bsz = self._batch
        entry = self._graphs.get(bsz)
        if entry is None:
            entry = self._graphs[bsz] = self._capture(bsz)
        graph, ids_buf, out = entry
        ids_buf.copy_(ids)
        graph.replay()
        return out.clone()  # the next replay writes into the same buffer

    def _capture(self, bsz):
        """Record one step at batch ``bsz`` (compiled or eager) into a CUDA graph.

        The warm-up runs (cuBLAS workspaces, SDPA kernel choice, compiling) really step the
        decoder, so the position, slot and mask they move are put back before recording; the
        K/V they wrote sit in slots that are masked and overwritten by the next real step.
        Recording itself runs nothing.
        """
        compiled = self._compiled is not None
        step = self._compiled if compiled else self._decode_static
        with torch.inference_mode(False):  # normal tensors: a later step may come from outside inference mode
            return self._record(bsz, step, compiled)

    def _record(self, bsz, step, compiled):
        ids_buf = torch.zeros(bsz, dtype=torch.long, device=self.device)
        saved = [(t, t.clone()) for t in (self._pos, self._slot, self._key_bias)]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.no_grad():
            try:
                for _ in range(2):
                    step(ids_buf)
            except Exception as exc:  # noqa: BLE001 - compiling failed: capture the eager step instead
                if not compiled:
                    raise
                self._compiled, step = None, self._decode_static
                _warn_compile_failed(exc, "capturing the eager step", 5)
                for _ in range(2):
                    step(ids_buf)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        for t, copy in saved:
            t.copy_(copy)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool), torch.no_grad():
            out = step(ids_buf)
        return graph, ids_buf, out


def _raise_recompile_limits() -> None:
    """Room for many compiled entries: every decoder (one per skipped layer when scoring) or model shape is one."""
    limits = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if isinstance(getattr(limits, name, None), int):
            setattr(limits, name, max(getattr(limits, name), 64))


def _warn_compile_failed(exc: Exception, then: str, frames: int) -> None:
    """One warning naming the failure; ``frames``: how far above this call the caller of ``step`` is."""
    warnings.warn(f"torch.compile of the decode step failed ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0] if str(exc) else ''}); {then}", stacklevel=frames + 1)


class _AnyLengthStep:
    """``StaticDecoder._decode_one`` compiled with dynamic shapes, one for the whole process (:func:`_any_length_step`).

    Generation builds a decoder per call (per item at batch 1), so a compile owned by one decoder would be paid
    per item. The decoder is an argument here: dynamo guards on the types, shapes and constants it reads (layer
    count, head sizes, int8 or float weights, padding), not on the tensors' identity, so a new decoder of the same
    model shape reuses the compiled step, and the cache length, position and batch are symbolic. A failed compile
    marks it ``failed``, so that later decoders go eager at once instead of failing (and warning) again."""

    def __init__(self):
        _raise_recompile_limits()
        self.fn = torch.compile(StaticDecoder._decode_one, dynamic=True)
        self.failed = False


@functools.cache
def _any_length_step() -> _AnyLengthStep:
    return _AnyLengthStep()


@torch.inference_mode()
def generate_greedy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    max_new_tokens: int = 32, *, head_rows=None, eos_token_id: int | None = None,
                    pad_token_id: int = 0, compile: bool = False, decoder: StaticDecoder | None = None) -> torch.Tensor:
    """Greedy decoding with a ``StaticDecoder``; returns only the new tokens ``(B, max_new_tokens)``.

    With ``eos_token_id`` a row that emitted it gets ``pad_token_id`` afterwards and decoding stops
    (fewer columns) once every row has, as HF ``generate`` does; without it the length is fixed.
    ``decoder`` reuses an existing decoder built for this model (its caches are overwritten).
    """
    bsz, width = input_ids.shape
    if decoder is None:
        decoder = StaticDecoder(model, bsz, width + max_new_tokens, head_rows=head_rows, compile=compile)
    out = torch.empty(bsz, max_new_tokens, dtype=torch.long, device=decoder.device)
    logits = decoder.prefill(input_ids, attention_mask)
    done = torch.zeros(bsz, dtype=torch.bool, device=decoder.device) if eos_token_id is not None else None
    for i in range(max_new_tokens):
        nxt = decoder.token_ids(logits.argmax(-1))
        if done is not None:
            nxt = nxt.masked_fill(done, pad_token_id)
            done |= nxt == eos_token_id
        out[:, i] = nxt
        if done is not None and bool(done.all()):
            return out[:, : i + 1]
        if i + 1 < max_new_tokens:
            logits = decoder.step(nxt)
    return out
