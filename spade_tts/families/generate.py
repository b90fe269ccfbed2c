"""Speech generation for any :class:`SpeechLM`: one decode loop, one engine, the family's rule.

The loop (:func:`generate`) is the same for every family: left-pad the prompts, prefill, then
step token by token, letting rows whose item ended leave the batch where the rule allows it.
Two engines compute the logits, only over the rows of the output head that speech may use:

* :class:`spade_tts.decoding.StaticDecoder` (preallocated KV cache, head trimmed to those rows,
  CUDA graphs on a GPU, optional int8 weights on a CPU) whenever the LM is a plain HF
  Llama/Qwen2/Qwen3/Mistral causal LM; for LLaSA's 193,800-row head the trimmed head alone saves
  a third of the bytes read per token;
* the LM's own forward with its KV cache (``decoder="hf"``, and the fallback for other LMs such as
  CosyVoice 2's wrapper).

Both give the same greedy tokens (tests/test_families_core.py checks it). What to emit is the
family's *rule* (``SpeechLM.sampler``, a :class:`Sampler`): the default :class:`TokenSampler`
samples among ``layout.head_rows()`` (speech, stop and marker ids, never a text token) under the
family's :meth:`SpeechLM.token_mask` (OuteTTS 1.0: its word-block grammar) with temperature,
top-k, top-p and min-p after an optional repetition penalty, then optionally CosyVoice 2's
repetition-aware redraw, from one seeded CPU generator; the built-in model's rule forces its
phones in order (``spade_tts.families.builtin``). Without a config, the family's
``generation_defaults()`` apply. With ``GenerationConfig.draft`` the same loop hands the batch to
speculative decoding (``spade_tts.families.speculative``): same distribution, items one at a time,
for which the rules also give their choice as a distribution (``distribution``/``push``/
``snapshot``/``restore``) and the engines can ``extend`` by several tokens and ``rewind``.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from spade_tts.families.base import (EXACT_DECODERS, GenerationConfig, GenerationRequest, SpeechLM, check_decoder,
                                     decoder_options)


def static_supported(lm) -> bool:
    """True when ``lm`` is an HF causal LM that StaticDecoder runs (plain Llama/Qwen2/Qwen3/Mistral)."""
    from spade_tts.decoding.static_decoder import SUPPORTED_MODEL_TYPES

    cfg = getattr(lm, "config", None)
    return (getattr(cfg, "model_type", None) in SUPPORTED_MODEL_TYPES and hasattr(lm, "model")
            and hasattr(getattr(lm, "model"), "layers") and hasattr(lm, "get_output_embeddings"))


NUCLEUS_PREFIX = 32  # columns of the first partial sort; a row that needs more gets 4x more, then all. A small top-k
# costs less than a large one (on 15,360 codes: ~50 against ~125 us), and the built-in model's nucleus at its
# shipped temperature holds a median of ~25 codes (benchmarks/generation_anatomy.py; docs/reference-model.md)


def sorted_for_nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities sorted descending, their columns) as far as each row's top-p nucleus can reach.

    A full sort of every row at every step is what a speech vocabulary costs most here (15,360 codes:
    38 % of the built-in model's batched decode time on a CPU). When the k largest probabilities of a
    row already hold more than ``top_p`` of its mass, no column past them can enter its nucleus, so a
    partial sort (``topk``) of k columns gives the same nucleus. Each row starts at k =
    ``NUCLEUS_PREFIX`` and widens 4x at a time, up to the full sort; rows narrower than the widest are
    padded with zero probabilities (which no draw picks). Without a top-p cut: the full sort."""
    n = probs.shape[-1]
    if not (0 < top_p < 1) or n <= NUCLEUS_PREFIX:
        return probs.sort(-1, descending=True)
    def too_short(v: torch.Tensor) -> torch.Tensor:  # with a margin over float rounding in the cumulative sums
        return v.sum(-1) <= top_p + 1e-4

    vals, cols = probs.topk(NUCLEUS_PREFIX, dim=-1)
    short = too_short(vals)
    while bool(short.any()):
        k = min(4 * vals.shape[-1], n)
        rows = short.nonzero().squeeze(1)
        v, c = probs[rows].topk(k, dim=-1) if k < n else probs[rows].sort(-1, descending=True)
        vals = torch.nn.functional.pad(vals, (0, k - vals.shape[-1]))
        cols = torch.nn.functional.pad(cols, (0, k - cols.shape[-1]))
        vals[rows], cols[rows] = v, c
        short[rows] = too_short(v) if k < n else False
    return vals, cols


def _filtered(logits: torch.Tensor, cfg: GenerationConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sampling distribution before normalizing: (probabilities, None) in column order, or, with a
    top-p / min-p cut, (kept probabilities sorted descending, their columns; with top-p perhaps only the
    first columns, see :func:`sorted_for_nucleus`)."""
    scaled = logits.float().cpu() / cfg.temperature
    if 0 < cfg.top_k < scaled.shape[-1]:  # ties with the k-th are kept, as HF's top-k does
        scaled = scaled.masked_fill(scaled < scaled.topk(cfg.top_k, dim=-1).values[:, -1:], float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if not (0 < cfg.top_p < 1 or cfg.min_p > 0):
        return probs, None
    sorted_p, order = sorted_for_nucleus(probs, cfg.top_p)
    keep = torch.ones_like(sorted_p, dtype=torch.bool)
    if 0 < cfg.top_p < 1:
        keep &= (sorted_p.cumsum(-1) - sorted_p) < cfg.top_p  # the top token is always kept
    if cfg.min_p > 0:
        keep &= sorted_p >= cfg.min_p * sorted_p[:, :1]
    return sorted_p * keep, order


def _pick(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator) -> torch.Tensor:
    """Column index per row: argmax (greedy or temperature 0) or temperature + top-k/top-p/min-p sampling."""
    if cfg.greedy or cfg.temperature <= 0:
        return logits.argmax(-1)
    probs, order = _filtered(logits, cfg)
    choice = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    if order is not None:
        choice = order.gather(-1, choice[:, None]).squeeze(-1)
    return choice.to(logits.device)


def pick_distribution(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """What :func:`_pick` draws from, normalized, in column order (float64; one-hot when greedy)."""
    if cfg.greedy or cfg.temperature <= 0:
        return torch.nn.functional.one_hot(logits.argmax(-1).cpu(), logits.shape[-1]).double()
    probs, order = _filtered(logits, cfg)
    if order is not None:
        probs = torch.zeros(logits.shape, dtype=probs.dtype).scatter_(-1, order, probs)
    probs = probs.double()
    return probs / probs.sum(-1, keepdim=True)


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


def repetition_aware_distribution(probs: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor, history: list[int],
                                  cfg: GenerationConfig) -> torch.Tensor:
    """What :func:`repetition_aware` turns one row's nucleus distribution ``probs`` into: the mass of every
    column it would redraw moves to the whole distribution at the sampling temperature."""
    if cfg.ras_window <= 0 or cfg.greedy or cfg.temperature <= 0:
        return probs
    recent = history[-cfg.ras_window:]
    col = {r: c for c, r in enumerate(rows.tolist())}
    over = [col[t] for t in set(recent) if t in col and recent.count(t) >= cfg.ras_window * cfg.ras_tau]
    if not over:
        return probs
    redrawn = float(probs[over].sum())
    out = probs.clone()
    out[over] = 0.0
    return out + redrawn * torch.softmax(logits.double().cpu() / cfg.temperature, dim=-1)


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

    static = True  # rows stay in the batch (HF's cache has no row selection here)

    def __init__(self, lm, rows: torch.Tensor):
        self.lm, self.rows = lm, rows
        self.device = next(lm.parameters()).device
        self.vocab_ids = rows.to(self.device)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from spade_tts.hf_compat import output_cache

        self.mask = mask.to(self.device)
        pos = (self.mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.lm(input_ids=ids.to(self.device), attention_mask=self.mask, position_ids=pos, use_cache=True)
        self.cache, self.pos = output_cache(out), pos[:, -1]
        return out.logits[:, -1].index_select(-1, self.vocab_ids)

    @torch.inference_mode()
    def step(self, nxt: torch.Tensor) -> torch.Tensor:
        from spade_tts.hf_compat import cache_kwargs, output_cache

        self.mask = torch.cat([self.mask, self.mask.new_ones(len(nxt), 1)], dim=1)
        self.pos = self.pos + 1
        out = self.lm(input_ids=nxt[:, None].to(self.device), attention_mask=self.mask, position_ids=self.pos[:, None],
                      use_cache=True, **cache_kwargs(self.lm, self.cache))
        self.cache = output_cache(out)
        return out.logits[:, -1].index_select(-1, self.vocab_ids)

    @torch.inference_mode()
    def extend(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed (B, n) tokens at once; logits after each (B, n, len(rows))."""
        from spade_tts.hf_compat import cache_kwargs, output_cache

        n = ids.shape[1]
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(ids), n)], dim=1)
        pos = self.pos[:, None] + torch.arange(1, n + 1, device=self.device)
        out = self.lm(input_ids=ids.to(self.device), attention_mask=self.mask, position_ids=pos, use_cache=True,
                      **cache_kwargs(self.lm, self.cache))
        self.cache, self.pos = output_cache(out), pos[:, -1]
        return out.logits.index_select(-1, self.vocab_ids)

    def rewind(self, tokens: int) -> None:
        """Forget the last ``tokens`` fed tokens (the cache must be one HF can cut back: DynamicCache)."""
        if tokens <= 0:
            return
        if not hasattr(self.cache, "crop"):
            raise ValueError(f"{type(self.lm).__name__} returns a {type(self.cache).__name__}, which cannot be cut "
                             "back after a rejected draft; speculative decoding needs an HF DynamicCache")
        self.mask = self.mask[:, :-tokens]
        self.pos = self.pos - tokens
        self.cache.crop(-tokens)  # negative: drop that many (transformers 5 refuses the 4.x absolute length)


def decode_engine(lm, batch: int, max_len: int, rows: torch.Tensor, decoder: str = "static"):
    """The engine ``decoder`` names for ``lm``: prefill(ids, mask) and step(ids) give logits over ``rows``."""
    device = next(lm.parameters()).device
    check_decoder(decoder, device)
    if decoder != "hf" and static_supported(lm):
        from spade_tts.decoding import StaticDecoder

        # on a GPU each step is one CUDA-graph replay (launch-bound otherwise); rows then stay in the batch
        return StaticDecoder(lm, batch, max_len, head_rows=rows, cuda_graphs=device.type == "cuda",
                             **decoder_options(decoder))
    if decoder not in EXACT_DECODERS:
        raise ValueError(f"decoder={decoder} needs the static decoder; this {type(lm).__name__} decodes with its "
                         "own forward (use decoder=static)")
    return _HFEngine(lm, rows)


class Sampler(Protocol):
    """A family's generation rule for one batch: which token each row emits next, and when it is done.

    ``rows``: the token ids the engine computes logits for (columns, in this order); ``max_steps``:
    an upper bound on the loop's steps; ``independent_rows``: True when a row's choices do not depend
    on the other rows (then finished rows may leave the batch without changing anything).
    """

    rows: torch.Tensor
    max_steps: int
    independent_rows: bool

    def choose(self, step: int, logits: torch.Tensor, live: list[int]) -> list[int]:
        """Next token id of each row in ``live`` (batch indices), from ``logits`` (len(live), len(rows))."""

    def finished(self, b: int) -> bool:
        """Whether item ``b`` has ended."""

    def result(self, b: int) -> "Generation":
        """What item ``b`` generated."""

    # rules that speculative decoding can run also give (spade_tts.families.speculative):
    # distribution(b, logits) -> float64 probabilities over the columns, what choose() would draw item b's next
    # token from; push(b, token) emits it; snapshot(b) / restore(b, snap) undo pushes (rejected drafts)


@dataclass
class Generation:
    """One item's generated ids (speech, stop and rule tokens such as phones) and what the guards did."""

    ids: list[int]
    guard_hits: int = 0  # forced moves of a length guard (phone-forced rules)
    truncated: bool = False  # the item ended at a length limit, not by itself
    code_values: np.ndarray | None = None  # (speech tokens, dims): what the codec decodes instead (soft_codes)


@dataclass
class GenerationStats:
    """Time in the decode loop (prefill + token steps, synchronized on CUDA) and steps taken."""

    lm_seconds: float = 0.0
    steps: int = 0
    extra: dict = field(default_factory=dict)


class TokenSampler:
    """The default rule: sample among ``layout.head_rows()`` under ``token_mask`` until a stop id.

    One seeded CPU generator serves the batch, so rows are not independent (they stay in the
    batch, feeding their stop id, until all have stopped or ``max_new_tokens`` is reached).
    """

    independent_rows = False

    def __init__(self, speech: SpeechLM, prompts: list[list[int]], cfg: GenerationConfig):
        if cfg.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={cfg.max_new_tokens} must be >= 1")
        self.speech, self.prompts, self.cfg = speech, prompts, cfg
        layout = speech.layout
        self.rows = layout.head_rows()
        self.max_steps = cfg.max_new_tokens
        self.stops = set(layout.stop_ids)
        self.col_of = {r: c for c, r in enumerate(self.rows.tolist())} if cfg.repetition_penalty != 1.0 else {}
        self.stop_cols = torch.tensor([i for i, r in enumerate(self.rows.tolist()) if r in self.stops], dtype=torch.long)
        self.gen = torch.Generator().manual_seed(int(cfg.seed))
        self.out: list[list[int]] = [[] for _ in prompts]
        self.done = [False] * len(prompts)

    def _masked(self, step: int, logits: torch.Tensor, live: list[int]) -> torch.Tensor:
        """``logits`` after the repetition penalty, the family's token mask and the min-length stop mask."""
        cfg, rows = self.cfg, self.rows
        if cfg.repetition_penalty != 1.0:
            logits = repetition_penalty(logits, self.col_of, [self.prompts[b] + self.out[b] for b in live],
                                        cfg.repetition_penalty, cfg.repetition_window)
        allowed = self.speech.token_mask(step, rows, [self.prompts[b] for b in live], [self.out[b] for b in live])
        if step < cfg.min_new_tokens and len(self.stop_cols):
            allowed = torch.ones(len(rows), dtype=torch.bool) if allowed is None else allowed.clone()
            allowed[..., self.stop_cols] = False
        if allowed is not None:  # out of place: the engines hand out inference-mode tensors
            logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
        return logits

    def choose(self, step: int, logits: torch.Tensor, live: list[int]) -> list[int]:
        logits = self._masked(step, logits, live)
        cols = repetition_aware(_pick(logits, self.cfg, self.gen), logits, self.rows, [self.out[b] for b in live],
                                self.cfg, self.gen)
        nxt = self.rows[cols.cpu()].tolist()
        for j, b in enumerate(live):
            if self.done[b]:
                nxt[j] = self.out[b][-1]  # a stopped row keeps feeding its stop id; not extended
                continue
            self.push(b, nxt[j])
        return nxt

    def finished(self, b: int) -> bool:
        return self.done[b]

    def result(self, b: int) -> Generation:
        return Generation(self.out[b], truncated=not self.done[b])

    # what speculative decoding needs (spade_tts.families.speculative): the rule as a distribution
    def distribution(self, b: int, logits: torch.Tensor) -> torch.Tensor:
        """Item ``b``'s next-token distribution over the columns (float64), given its logits (len(rows),)."""
        logits = self._masked(len(self.out[b]), logits[None].float(), [b])
        probs = pick_distribution(logits, self.cfg)[0]
        return repetition_aware_distribution(probs, logits[0], self.rows, self.out[b], self.cfg)

    def push(self, b: int, token: int) -> None:
        """Item ``b`` emits ``token``."""
        self.out[b].append(token)
        self.done[b] = token in self.stops

    def snapshot(self, b: int):
        return len(self.out[b]), self.done[b]

    def restore(self, b: int, snap) -> None:
        n, self.done[b] = snap
        del self.out[b][n:]


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of ``prompts`` left-padded to the longest, so that all rows step together."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, width - len(p):] = 1
    return ids, mask


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(speech: SpeechLM, requests: list[GenerationRequest], cfg: GenerationConfig | None = None,
             item_ids: list[int] | None = None) -> tuple[list[Generation], GenerationStats]:
    """Generate every request as one batch with the family's rule; (per-item results, loop time)."""
    cfg = cfg or speech.generation_defaults()
    prompts = [r.prompt for r in requests]
    ids, mask = left_padded(prompts, speech.pad_id)
    item_ids = list(range(len(requests))) if item_ids is None else list(item_ids)
    if cfg.draft:  # same distribution, fewer full-model forwards (items one at a time)
        from spade_tts.families.speculative import generate_speculative

        results, stats = generate_speculative(speech, requests, cfg, item_ids)
        _warn_truncated(results, cfg)
        return results, stats
    sampler = speech.sampler(requests, cfg, item_ids)
    device = next(speech.lm.parameters()).device
    runner = decode_engine(speech.lm, len(prompts), ids.shape[1] + sampler.max_steps + 1, sampler.rows, cfg.decoder)
    can_drop = cfg.drop_finished and sampler.independent_rows and hasattr(runner, "keep_rows") and not runner.static
    _sync(device)
    started = time.perf_counter()
    logits = runner.prefill(ids, mask)
    live = list(range(len(prompts)))
    step = 0
    while True:
        nxt = sampler.choose(step, logits.float(), live)
        step += 1
        keep = [j for j, b in enumerate(live) if not sampler.finished(b)]
        if not keep or step >= sampler.max_steps:
            break
        if can_drop and len(keep) < len(live):
            runner.keep_rows(keep)
            live, nxt = [live[j] for j in keep], [nxt[j] for j in keep]
        logits = runner.step(torch.tensor(nxt, dtype=torch.long, device=device))
    _sync(device)
    stats = GenerationStats(time.perf_counter() - started, step)
    results = [sampler.result(b) for b in range(len(prompts))]
    _warn_truncated(results, cfg)
    return results, stats


def _warn_truncated(results: list[Generation], cfg: GenerationConfig) -> None:
    cut = sum(r.truncated for r in results)
    if cut:
        warnings.warn(f"{cut} of {len(results)} generation(s) hit a length limit without a stop token "
                      f"(max_new_tokens={cfg.max_new_tokens}; phone-forced rules: max_seconds={cfg.max_seconds}, "
                      f"max_length_ratio={cfg.max_length_ratio}): the speech may be cut short", stacklevel=4)


def generate_ids(speech: SpeechLM, prompts: list[list[int]], cfg: GenerationConfig | None = None) -> list[list[int]]:
    """New token ids per prompt with the default rule's prompts (each ends with its stop id when one came)."""
    return [g.ids for g in generate(speech, [GenerationRequest(list(p)) for p in prompts], cfg)[0]]


def generate_codes(speech: SpeechLM, text: str, prompt_text: str = "", prompt_codes=None,
                   cfg: GenerationConfig | None = None):
    """One utterance: request built the family's way -> generated ids -> the codec's codes."""
    new = generate(speech, [speech.generation_request(text, prompt_text, prompt_codes)], cfg)[0][0].ids
    return speech.ids_to_codes(speech.speech_ids(new))
