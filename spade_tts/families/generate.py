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
    """Column index per row: argmax (greedy or temperature 0) or temperature + top-p sampling."""
    if cfg.greedy or cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float().cpu() / cfg.temperature, dim=-1)
    if 0 < cfg.top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = (sorted_p.cumsum(-1) - sorted_p) < cfg.top_p  # the top token is always kept
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p, 1, generator=gen).squeeze(-1)
        return order.gather(-1, choice[:, None]).squeeze(-1).to(logits.device)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1).to(logits.device)


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
    cfg = cfg or GenerationConfig()
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not one of {', '.join(ENGINES)}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if cfg.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={cfg.max_new_tokens} must be >= 1")
    lm, layout = speech.lm, speech.layout
    rows = layout.head_rows()
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
    if engine == "static":
        from spade_tts.decoding import StaticDecoder

        runner = StaticDecoder(lm, bsz, width + cfg.max_new_tokens, head_rows=rows)
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
        allowed = speech.step_mask(step, rows)
        if step < cfg.min_new_tokens and len(stop_cols):
            allowed = torch.ones(len(rows), dtype=torch.bool) if allowed is None else allowed.clone()
            allowed[stop_cols] = False
        if allowed is not None:  # out of place: the engines hand out inference-mode tensors
            logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
        cols = _pick(logits, cfg, gen)
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
