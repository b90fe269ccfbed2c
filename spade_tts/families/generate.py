"""Speech generation for any :class:`SpeechLM`: prompt ids in, speech (and stop) ids out.

Every family generates the same way once its prompt is built: sample the next token among the
rows of the output head that speech may use (``layout.head_rows()``: speech ids, stop ids, extra
ids such as frame markers), never a text token, until a stop id or ``max_new_tokens``. Two engines
compute the logits:

* ``static``: :class:`spade_tts.decoding.StaticDecoder` (preallocated KV cache, head trimmed to
  the speech rows) whenever the LM is a plain HF Llama/Qwen2/Qwen3/Mistral causal LM; for LLaSA's
  193,800-row head the trimmed head alone saves a third of the bytes read per token;
* ``hf``: the model's own forward with its KV cache, for everything else (CosyVoice 2's wrapper).

Both give the same greedy tokens (tests/test_families_core.py checks it). Sampling uses one
seeded CPU generator, so a seed gives the same speech on any engine up to float rounding.

Each step the family's :meth:`SpeechLM.token_mask` (which sees every sequence so far) narrows the rows further
(OuteTTS 1.0: its word-block grammar); the sampler is temperature, top-k, top-p and min-p after an optional
repetition penalty over a recent window, then optionally CosyVoice 2's repetition-aware redraw. Without a
config, the family's ``generation_defaults()`` apply.
"""
from __future__ import annotations

import warnings

import torch

from spade_tts.families.base import GenerationConfig, SpeechLM

ENGINES = ("auto", "static", "hf")


def static_supported(lm) -> bool:
    """True when ``lm`` is an HF causal LM that StaticDecoder runs (plain Llama/Qwen2/Qwen3/Mistral)."""
    from spade_tts.decoding.static_decoder import SUPPORTED_MODEL_TYPES

    cfg = getattr(lm, "config", None)
    return (getattr(cfg, "model_type", None) in SUPPORTED_MODEL_TYPES and hasattr(lm, "model")
            and hasattr(getattr(lm, "model"), "layers") and hasattr(lm, "get_output_embeddings"))


def _pick(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator) -> torch.Tensor:
    """Column index per row: argmax (greedy or temperature 0) or temperature + top-k/top-p/min-p sampling."""
    if cfg.greedy or cfg.temperature <= 0:
        return logits.argmax(-1)
    scaled = logits.float().cpu() / cfg.temperature
    if 0 < cfg.top_k < scaled.shape[-1]:  # ties with the k-th are kept, as HF's top-k does
        scaled = scaled.masked_fill(scaled < scaled.topk(cfg.top_k, dim=-1).values[:, -1:], float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if 0 < cfg.top_p < 1 or cfg.min_p > 0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = torch.ones_like(sorted_p, dtype=torch.bool)
        if 0 < cfg.top_p < 1:
            keep &= (sorted_p.cumsum(-1) - sorted_p) < cfg.top_p  # the top token is always kept
        if cfg.min_p > 0:
            keep &= sorted_p >= cfg.min_p * sorted_p[:, :1]
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p, 1, generator=gen).squeeze(-1)
        return order.gather(-1, choice[:, None]).squeeze(-1).to(logits.device)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1).to(logits.device)


def repetition_aware(cols: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor, generated: list[list[int]],
                     cfg: GenerationConfig, gen: torch.Generator) -> torch.Tensor:
    """CosyVoice 2's repetition-aware sampling: a row whose nucleus draw repeats a recent token too often
    draws again from its whole (masked) distribution at the sampling temperature."""
    if cfg.ras_window <= 0 or cfg.greedy or cfg.temperature <= 0:
        return cols
    out = cols.clone()
    for b, hist in enumerate(generated):
        token = int(rows[int(cols[b])])
        if sum(t == token for t in hist[-cfg.ras_window:]) >= cfg.ras_window * cfg.ras_tau:
            probs = torch.softmax(logits[b].float().cpu() / cfg.temperature, dim=-1)
            out[b] = int(torch.multinomial(probs, 1, generator=gen))
    return out


def repetition_penalty(logits: torch.Tensor, col: dict[int, int], contexts: list[list[int]], penalty: float,
                       window: int = 0) -> torch.Tensor:
    """``logits`` (batch, columns; ``col`` maps a token id to its column) with every id among the last ``window``
    tokens of its context (0 = all) penalized once: positive logits divided by ``penalty``, negative ones
    multiplied (HF's rule; OuteTTS 1.0 applies it over the last 64 tokens only)."""
    out = logits.clone()
    for b, ctx in enumerate(contexts):
        recent = ctx[-window:] if window > 0 else ctx
        cols = sorted({col[t] for t in recent if t in col})
        if cols:
            idx = torch.tensor(cols, device=logits.device)
            v = out[b, idx]
            out[b, idx] = torch.where(v > 0, v / penalty, v * penalty)
    return out


class _HFEngine:
    """Logits over ``rows`` from the model's own forward with its KV cache (left padding handled)."""

    def __init__(self, lm, rows: torch.Tensor):
        self.lm, self.rows = lm, rows
        self.device = next(lm.parameters()).device

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from spade_tts.hf_compat import output_cache

        self.mask = mask.to(self.device)
        pos = (self.mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.lm(input_ids=ids.to(self.device), attention_mask=self.mask, position_ids=pos, use_cache=True)
        self.cache, self.pos = output_cache(out), pos[:, -1]
        return out.logits[:, -1].index_select(-1, self.rows.to(self.device))

    @torch.inference_mode()
    def step(self, nxt: torch.Tensor) -> torch.Tensor:
        from spade_tts.hf_compat import cache_kwargs, output_cache

        self.mask = torch.cat([self.mask, self.mask.new_ones(len(nxt), 1)], dim=1)
        self.pos = self.pos + 1
        out = self.lm(input_ids=nxt[:, None].to(self.device), attention_mask=self.mask, position_ids=self.pos[:, None],
                      use_cache=True, **cache_kwargs(self.lm, self.cache))
        self.cache = output_cache(out)
        return out.logits[:, -1].index_select(-1, self.rows.to(self.device))


def generate_ids(speech: SpeechLM, prompts: list[list[int]], cfg: GenerationConfig | None = None,
                 engine: str = "auto") -> list[list[int]]:
    """New token ids per prompt, each ending with its stop id when one came (speech/stop/extra ids only).

    A batch is left-padded; rows that stopped keep feeding their stop id and are not extended.
    """
    cfg = cfg or speech.generation_defaults()
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not one of {', '.join(ENGINES)}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if cfg.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={cfg.max_new_tokens} must be >= 1")
    lm, layout = speech.lm, speech.layout
    rows = layout.head_rows()
    col_of = {r: c for c, r in enumerate(rows.tolist())} if cfg.repetition_penalty != 1.0 else {}
    stop_cols = torch.tensor([i for i, r in enumerate(rows.tolist()) if r in set(layout.stop_ids)], dtype=torch.long)
    bsz, width = len(prompts), max(len(p) for p in prompts)
    pad = speech.pad_id
    ids = torch.full((bsz, width), pad, dtype=torch.long)
    mask = torch.zeros((bsz, width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, width - len(p):] = 1

    if engine == "auto":
        engine = "static" if static_supported(lm) else "hf"
    if cfg.int8_weights and engine != "static":
        raise ValueError(f"int8_weights needs the static engine; this {type(lm).__name__} decodes with HF forward "
                         "(leave int8 off)")
    if engine == "static":
        from spade_tts.decoding import StaticDecoder

        on_gpu = next(lm.parameters()).device.type == "cuda"  # one CUDA-graph replay per token there
        runner = StaticDecoder(lm, bsz, width + cfg.max_new_tokens, head_rows=rows, cuda_graphs=on_gpu,
                               int8_weights=cfg.int8_weights)
        rows_dev = runner.vocab_ids
    else:
        runner = _HFEngine(lm, rows)
        rows_dev = rows.to(runner.device)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    logits = runner.prefill(ids, mask)
    out: list[list[int]] = [[] for _ in range(bsz)]
    done = [False] * bsz
    for step in range(cfg.max_new_tokens):
        logits = logits.float()
        if cfg.repetition_penalty != 1.0:
            logits = repetition_penalty(logits, col_of, [p + o for p, o in zip(prompts, out)],
                                        cfg.repetition_penalty, cfg.repetition_window)
        allowed = speech.token_mask(step, rows, prompts, out)
        if step < cfg.min_new_tokens and len(stop_cols):
            allowed = torch.ones(len(rows), dtype=torch.bool) if allowed is None else allowed.clone()
            allowed[..., stop_cols] = False
        if allowed is not None:  # out of place: the engines hand out inference-mode tensors
            logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
        cols = repetition_aware(_pick(logits, cfg, gen), logits, rows, out, cfg, gen)
        nxt = rows_dev[cols]
        for b in range(bsz):
            if not done[b]:
                token = int(nxt[b])
                out[b].append(token)
                done[b] = token in layout.stop_ids
            else:
                nxt[b] = out[b][-1]
        if all(done) or step + 1 == cfg.max_new_tokens:
            break
        logits = runner.step(nxt)
    cut = sum(not d for d in done)
    if cut:
        warnings.warn(f"{cut} of {bsz} generation(s) reached max_new_tokens={cfg.max_new_tokens} without a stop "
                      "token: the speech may be cut short (raise max_new_tokens)", stacklevel=2)
    return out


def generate_codes(speech: SpeechLM, text: str, prompt_text: str = "", prompt_codes=None,
                   cfg: GenerationConfig | None = None, engine: str = "auto"):
    """One utterance: prompt built the family's way -> generated ids -> the codec's codes."""
    prompt = speech.prompt_ids(text, prompt_text, prompt_codes)
    new = generate_ids(speech, [prompt], cfg, engine)[0]
    return speech.ids_to_codes(speech.speech_ids(new))
