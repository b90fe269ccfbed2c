"""Speculative decoding for any :class:`SpeechLM`: a cheap draft proposes, the model checks several tokens at once.

Why: layer pruning trades quality for speed; speculative decoding keeps the full model's output
distribution exactly and gets speed from the same ranking instead. A cheap *draft* proposes
``draft_tokens`` = k tokens one by one; the full model scores all of them in one forward
(``extend``), which on hardware bound by reading the weights costs about one step; the tokens it
agrees with are kept, so one full-model forward yields 1 to k + 1 tokens. Drafts:

* ``skip=N``: the model itself with its N least important layers by WLI (``draft_scores``, default
  ``<model>/scores.json`` from ``spade score``) bypassed, as in Draft & Verify / LayerSkip: no
  extra weights (the draft decoder calls the same tensors), only a second KV cache;
* ``skip-layers=I,J,...``: those layers bypassed;
* ``student=PATH``: a checkpoint with the same speech tokens, loaded with the model's family
  (the distilled half-depth student of ``spade distill``).

What is drafted and verified is the family's own rule as a distribution (``Sampler.distribution``:
temperature, top-k/top-p/min-p, token masks, repetition penalty and redraw, the built-in model's
phone forcing and its guards), applied to the draft's logits and to the model's. Acceptance is the
speculative-sampling rule (Leviathan et al. 2023, Chen et al. 2023): keep draft token x with
probability min(1, p(x) / q(x)); at the first rejection draw from normalize(max(0, p - q)); after k
acceptances draw one more token from p. The output then follows p exactly (greedy: p and q are
one-hot and this is "keep identical tokens, else take the model's"). Both KV caches are rewound past
the rejected tokens and the rule's per-item state is restored before the model's choices are pushed.

Group-level acceptance (``draft_accept=groups=N``, off by default; Principled Coarse-Graining,
arXiv 2511.13732): many speech tokens sound alike, so demanding the model's exact token rejects drafts
that would sound the same. The speech tokens are split into N groups by k-means over the model's own
input embeddings (every other token is a group of its own); the test above runs on group masses
P(G) and Q(G) instead of p(x) and q(x), a rejection draws the group from normalize(max(0, P - Q)) and
the token within it from p. The group sequence then follows the model's exactly, the tokens within a
group are the draft's: no longer lossless, so its figures are reported apart from the exact ones.

Items decode one at a time (batch 1): acceptance lengths differ between rows, and batch 1 is where
decoding is slowest per token. Every item draws from its own generator, seeded by (seed, item), so
a result does not depend on the batch it came in. ``GenerationStats.extra`` reports the acceptance
rate and tokens per full-model forward (plain decoding: 1).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from spade_tts.families.base import EXACT_DECODERS, GenerationConfig, GenerationRequest, SpeechLM

KINDS = ("student=PATH", "skip=N", "skip-layers=I,J,...")
ACCEPT_MODES = ("exact", "groups=N")
RULE_METHODS = ("distribution", "push", "snapshot", "restore")
DRAFT_COUNTS = ("proposed", "accepted", "tokens", "target_forwards")  # what an item records; sums over items add up


def draft_summary(counts: dict) -> dict:
    """``counts`` (at least DRAFT_COUNTS) with the two rates derived from them (None where nothing was proposed)."""
    return {**counts, "acceptance_rate": counts["accepted"] / counts["proposed"] if counts["proposed"] else None,
            "tokens_per_forward": counts["tokens"] / counts["target_forwards"] if counts["target_forwards"] else None}


def parse_draft(text: str) -> tuple[str, object]:
    """``draft=`` text -> (kind, argument): ("student", path), ("skip", n) or ("skip-layers", [i, j, ...])."""
    kind, sep, arg = str(text).strip().partition("=")
    kind, arg = kind.strip().lower(), arg.strip()
    try:
        if sep and arg and kind == "student":
            return "student", arg
        if sep and kind == "skip" and int(arg) >= 1:
            return "skip", int(arg)
        layers = sorted({int(i) for i in arg.split(",") if i.strip()}) if sep else []
        if kind in ("skip-layers", "skip_layers") and layers:
            return "skip-layers", layers
    except ValueError:
        pass
    raise ValueError(f"draft={text!r}: use {', '.join(KINDS)} (N >= 1 layers; docs/decoding.md)")


def parse_accept(text: str) -> int:
    """``draft_accept=`` text -> the number of speech-token groups (0 = exact acceptance)."""
    mode, sep, arg = str(text).strip().lower().partition("=")
    if mode == "exact" and not sep:
        return 0
    if mode == "groups" and sep and arg.strip().isdigit() and int(arg) >= 2:
        return int(arg)
    raise ValueError(f"draft_accept={text!r}: use exact (lossless, the default) or groups=N (N >= 2 groups of "
                     "speech tokens; docs/decoding.md)")


def check_draft(draft: str | None, draft_tokens: int, decoder: str, draft_accept: str = "exact"
                ) -> tuple[str, object] | None:
    """One-line errors for draft settings, before any model runs: (kind, argument) of ``draft`` (None: not parsed)."""
    parsed = None if draft is None else parse_draft(draft)
    parse_accept(draft_accept)
    if int(draft_tokens) < 1:
        raise ValueError(f"draft_tokens={draft_tokens}: the draft proposes at least 1 token per round")
    if decoder not in EXACT_DECODERS:
        raise ValueError(f"draft= with decoder={decoder}: the model's checking forward runs the float layers "
                         "uncompiled, so the output would follow neither path; use decoder=static")
    return parsed


def skipped_layers(speech: SpeechLM, kind: str, arg, scores_file: str = "") -> list[int]:
    """The layers a skip draft bypasses: ``arg`` itself, or the N lowest by WLI in the model's scores file."""
    from spade_tts.pruning.layers import find_decoder

    depth = len(find_decoder(speech.lm).layers)
    if kind == "skip-layers":
        bad = [i for i in arg if not 0 <= i < depth]
        if bad or len(arg) >= depth:
            raise ValueError(f"draft=skip-layers={','.join(map(str, arg))}: layers must lie in 0..{depth - 1} and at "
                             "least one must stay")
        return list(arg)
    if arg >= depth:
        raise ValueError(f"draft=skip={arg}: the model has {depth} layers; skip 1..{depth - 1}")
    from spade_tts.pruning.layers import model_fingerprint
    from spade_tts.pruning.prune import choose_kept_layers, load_scores

    path = Path(scores_file) if scores_file else speech.path / "scores.json"
    if not path.is_file():
        from spade_tts.families import BUILTIN_MODEL

        hint = "; the built-in model's: docs/builtin_scores_56.json in the repository" if (
            speech.path.resolve() == BUILTIN_MODEL.resolve()) else ""
        raise FileNotFoundError(f"draft=skip={arg} ranks layers by WLI, and {path} does not exist: give "
                                f"draft_scores=PATH (scores.json of `spade score` on this model{hint}) or "
                                "draft=skip-layers=I,J")
    scores = load_scores(path)
    if scores["num_layers"] != depth or scores.get("model_fingerprint") not in (None, model_fingerprint(speech.lm)):
        raise ValueError(f"draft scores {path} were computed on another model ({scores['num_layers']} layers, "
                         f"fingerprint {scores.get('model_fingerprint')}); score this one with `spade score`")
    kept = choose_kept_layers(scores, depth - arg, "wli")
    return [i for i in range(depth) if i not in kept]


class _SkippedEngine:
    """The LM's own forward with layers bypassed, for LMs the static decoder does not run: each call
    swaps the layer subset in and back out (``skip_layers``), so the model is whole between calls."""

    static = True

    def __init__(self, engine, skip: list[int]):
        self.engine, self.skip = engine, skip

    def _run(self, name, *args):
        from spade_tts.pruning.layers import skip_layers

        with skip_layers(self.engine.lm, self.skip):
            return getattr(self.engine, name)(*args)

    def prefill(self, ids, mask):
        return self._run("prefill", ids, mask)

    def step(self, nxt):
        return self._run("step", nxt)

    def extend(self, ids):
        return self._run("extend", ids)

    def rewind(self, tokens: int) -> None:
        self.engine.rewind(tokens)


def load_student(speech: SpeechLM, path: str):
    """The student's LM, loaded once per model (same family, dtype and device); refused unless its
    speech tokens are the model's, since the model verifies the student's token ids as its own."""
    from spade_tts.families.registry import load_speech_lm

    cache = speech.__dict__.setdefault("_spade_draft_students", {})
    if path not in cache:
        first = next(speech.lm.parameters())
        student = load_speech_lm(path, speech.family, dtype=first.dtype, device=str(first.device))
        if student.layout != speech.layout or student.vocab_size != speech.vocab_size:
            mine, its = speech.layout, student.layout
            raise ValueError(f"draft student {path} has another vocabulary ({student.vocab_size} ids, speech "
                             f"{its.speech_start}..{its.speech_end}) than the model ({speech.vocab_size} ids, speech "
                             f"{mine.speech_start}..{mine.speech_end}); a draft must share the model's speech tokens")
        cache[path] = student.lm
    return cache[path]


def draft_engine(speech: SpeechLM, cfg: GenerationConfig, rows: torch.Tensor, max_len: int, draft_lm=None):
    """The engine that drafts (batch 1): a skip draft over the model's own weights, or a student's LM
    (``draft_lm``, when given, is used as the student: tests and benchmarks that hold one already)."""
    from spade_tts.families.generate import _HFEngine, decode_engine, static_supported

    if draft_lm is None:
        kind, arg = parse_draft(cfg.draft)
        if kind == "student":
            draft_lm = load_student(speech, arg)
        else:
            skip = skipped_layers(speech, kind, arg, cfg.draft_scores)
            if cfg.decoder != "hf" and static_supported(speech.lm):
                from spade_tts.pruning.layers import skip_layers

                with skip_layers(speech.lm, skip):  # the decoder reads the layer list now: the subset, no copies
                    return decode_engine(speech.lm, 1, max_len, rows, cfg.decoder)
            return _SkippedEngine(_HFEngine(speech.lm, rows), skip)
    return decode_engine(draft_lm, 1, max_len, rows, cfg.decoder)


def _check_rewinds(engine, what: str) -> None:
    """After a prefill: one line, before any decoding, when ``engine`` cannot forget rejected tokens."""
    inner = getattr(engine, "engine", engine)
    cache = getattr(inner, "cache", None)
    # a sliding-window layer of an HF cache keeps only the last window: cut back, it would lack the states before
    sliding = any("Sliding" in type(layer).__name__ for layer in getattr(cache, "layers", ()))
    if not hasattr(engine, "rewind") or (cache is not None and (not hasattr(cache, "crop") or sliding)):
        raise ValueError(f"the {what} decodes with a {type(getattr(inner, 'lm', inner)).__name__} whose KV cache "
                         f"({type(cache).__name__}) cannot be cut back after a rejected draft; speculative decoding "
                         "needs the static decoder or an HF DynamicCache without sliding-window layers")


def speech_token_groups(speech: SpeechLM, n: int, iterations: int = 30) -> torch.Tensor:
    """The group (0..n-1) of every speech token: spherical k-means over the model's input embeddings of its speech
    tokens, which the model learned to treat alike when they sound alike (PCG derives its groups from the target's
    embedding space too). Deterministic; computed once per model and n."""
    cache = speech.__dict__.setdefault("_spade_token_groups", {})
    if n not in cache:
        lay = speech.layout
        size = lay.speech_end - lay.speech_start
        if not 2 <= n <= size:
            raise ValueError(f"draft_accept=groups={n}: the model has {size} speech tokens; use 2..{size} groups")
        emb = speech.lm.get_input_embeddings().weight[lay.speech_start:lay.speech_end].detach().float().cpu()
        x = torch.nn.functional.normalize(emb, dim=1)
        centers = x[torch.randperm(size, generator=torch.Generator().manual_seed(0))[:n]].clone()
        for _ in range(iterations):
            assign = (x @ centers.T).argmax(1)
            sums = torch.zeros_like(centers).index_add_(0, assign, x)
            filled = torch.bincount(assign, minlength=n) > 0  # an emptied group keeps its old centre
            centers[filled] = torch.nn.functional.normalize(sums[filled], dim=1)
        cache[n] = (x @ centers.T).argmax(1)
    return cache[n]


def column_groups(speech: SpeechLM, rows: torch.Tensor, n: int) -> torch.Tensor | None:
    """The group of each of the rule's columns (token ids ``rows``): speech tokens by :func:`speech_token_groups`,
    every other token alone. None for n = 0 (exact acceptance: each token its own group)."""
    if not n:
        return None
    lay, rows = speech.layout, rows.cpu()
    speech_cols = (rows >= lay.speech_start) & (rows < lay.speech_end)
    out = n + torch.arange(len(rows))
    out[speech_cols] = speech_token_groups(speech, n)[rows[speech_cols] - lay.speech_start]
    return out


def _masses(probs: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """Probability per group (the distribution itself when every token is its own group)."""
    return probs if groups is None else probs.new_zeros(int(groups.max()) + 1).index_add_(0, groups, probs)


def accept(p: float, q: float, u: float) -> bool:
    """The speculative-sampling test: keep a draft token with probability min(1, p / q) (``u`` uniform)."""
    return u * q < p


def _draw(probs: torch.Tensor, gen: torch.Generator) -> int:
    """One column drawn from ``probs`` (float64, not necessarily normalized) by inverse CDF."""
    cdf = probs.cumsum(0)
    u = torch.rand(1, generator=gen, dtype=torch.float64) * cdf[-1]
    return min(int(torch.searchsorted(cdf, u, right=True)), len(probs) - 1)


def item_generator(seed: int, item: int) -> torch.Generator:
    """The random stream of one item's speculative decoding (apart from the rule's own streams)."""
    state = np.random.SeedSequence([int(seed), int(item), 0x5BEC]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


class _Counts:
    def __init__(self):
        self.proposed = self.accepted = self.tokens = self.target_forwards = self.draft_forwards = 0


def _decode_item(b: int, prompt: list[int], sampler, target, draft, k: int, gen: torch.Generator,
                 counts: _Counts, device: torch.device, groups: torch.Tensor | None = None) -> None:
    """Generate item ``b`` into ``sampler`` (its state holds the output).

    Invariants between rounds: the model has consumed every emitted token but ``pending`` (the last
    one; None right after the prefill, whose logits are ``p_first``); the draft has consumed every
    emitted token but those in ``lag`` (at most two).
    """
    rows = sampler.rows.tolist()
    ids = torch.tensor([prompt], dtype=torch.long)
    p_first = target.prefill(ids, torch.ones_like(ids))[0]
    q_logits = draft.prefill(ids, torch.ones_like(ids))[0]
    counts.target_forwards += 1
    counts.draft_forwards += 1
    pending, lag, emitted = None, [], 0

    def feed(engine, tokens):  # logits after each token; one token goes through the (leaner) step
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        return engine.step(ids[0]) if len(tokens) == 1 else engine.extend(ids)[0]

    while not sampler.finished(b) and emitted < sampler.max_steps:
        m_max = min(k, sampler.max_steps - emitted - 1)  # room for the model's own token after the drafts
        snap = sampler.snapshot(b)
        proposals, qs = [], []
        if m_max > 0:
            if lag:
                q_logits = feed(draft, lag)[-1]
                counts.draft_forwards += 1
                lag = []
            for i in range(m_max):
                q = sampler.distribution(b, q_logits)
                x = _draw(q, gen)
                proposals.append(x)
                qs.append(q)
                sampler.push(b, rows[x])
                if sampler.finished(b) or i == m_max - 1:
                    break
                q_logits = feed(draft, [rows[x]])[-1]
                counts.draft_forwards += 1
            sampler.restore(b, snap)
        m = len(proposals)
        tokens = ([] if pending is None else [pending]) + [rows[x] for x in proposals]
        logits = [p_first] if pending is None else []
        if tokens:
            logits += list(feed(target, tokens))
            counts.target_forwards += 1
        accepted, y = 0, None
        for i, x in enumerate(proposals):
            p = sampler.distribution(b, logits[i])
            pg, qg = _masses(p, groups), _masses(qs[i], groups)
            g = x if groups is None else int(groups[x])
            if accept(float(pg[g]), float(qg[g]), float(torch.rand(1, generator=gen, dtype=torch.float64))):
                sampler.push(b, rows[x])
                accepted += 1
                if sampler.finished(b):
                    break
            else:
                residual = (pg - qg).clamp_(min=0.0)
                g = _draw(residual if float(residual.sum()) > 0 else pg, gen)
                members = None if groups is None else groups == g
                y = g if members is None else (int(members.nonzero()[0]) if int(members.sum()) == 1
                                              else _draw(p * members, gen))
                break
        if y is None and accepted == m and not sampler.finished(b):
            y = _draw(sampler.distribution(b, logits[m]), gen)
        if y is not None:
            sampler.push(b, rows[y])
        emitted += accepted + (y is not None)
        counts.proposed += m
        counts.accepted += accepted
        if m:  # forget the rejected drafts: the model fed all m, the draft the first m - 1
            target.rewind(m - accepted)
            draft.rewind(m - 1 - min(accepted, m - 1))
        lag += [rows[x] for x in proposals[min(accepted, max(m - 1, 0)):accepted]] + ([] if y is None else [rows[y]])
        pending = None if y is None else rows[y]
    counts.tokens += emitted


@torch.no_grad()
def generate_speculative(speech: SpeechLM, requests: list[GenerationRequest], cfg: GenerationConfig,
                         item_ids: list[int], draft_lm=None):
    """:func:`spade_tts.families.generate.generate` with ``cfg.draft``: (per-item results, stats)."""
    from spade_tts.families.generate import GenerationStats, _sync, decode_engine

    check_draft(cfg.draft if draft_lm is None else None, cfg.draft_tokens, cfg.decoder, cfg.draft_accept)
    k = int(cfg.draft_tokens)
    sampler = speech.sampler(requests, cfg, item_ids)
    missing = [name for name in RULE_METHODS if not hasattr(sampler, name)]
    if missing:
        raise ValueError(f"the {speech.family} family's rule ({type(sampler).__name__}) has no {missing[0]}(): "
                         "speculative decoding needs the rule as a distribution")
    max_len = max(len(r.prompt) for r in requests) + sampler.max_steps + k + 2
    target = decode_engine(speech.lm, 1, max_len, sampler.rows, cfg.decoder)
    draft = draft_engine(speech, cfg, sampler.rows, max_len, draft_lm)
    device = next(speech.lm.parameters()).device
    groups = column_groups(speech, sampler.rows, parse_accept(cfg.draft_accept))
    groups = None if groups is None else groups.to(device)
    counts = _Counts()
    _sync(device)
    started = time.perf_counter()
    for b, (request, item) in enumerate(zip(requests, item_ids)):
        _decode_item(b, request.prompt, sampler, _Checked(target, "model"), _Checked(draft, "draft"), k,
                     item_generator(cfg.seed, item), counts, device, groups)
    _sync(device)
    stats = GenerationStats(time.perf_counter() - started, counts.tokens)
    stats.extra.update({"draft": cfg.draft or "student (given)", "draft_tokens": k, "draft_accept": cfg.draft_accept,
                        **draft_summary(vars(counts))})
    return [sampler.result(b) for b in range(len(requests))], stats


class _Checked:
    """An engine whose first prefill checks that it can rewind (a clear line before any decoding)."""

    def __init__(self, engine, what: str):
        self.engine, self.what = engine, what

    def prefill(self, ids, mask):
        out = self.engine.prefill(ids, mask)
        _check_rewinds(self.engine, self.what)
        return out

    def __getattr__(self, name):
        return getattr(self.engine, name)
