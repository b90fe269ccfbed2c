"""Zero-shot synthesis with the reference LM: batched, KV-cached, phone-forced decoding.

At every step the model may emit a speech token or move on to the next phone of the target
(the only phone it is allowed), or, after the last phone, end the speech. Nothing else is
sampled, so the text is always read in order. Two guards stop a runaway decoder: a phone that
lasts longer than ``max_phone_seconds`` is ended by force, and the whole item is cut at
``max_seconds``; both are counted and reported rather than failing silently.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import LlamaForCausalLM

from spade_tts.hf_compat import cache_kwargs, output_cache
from spade_tts.reference.vocab import Vocab

BUILTIN_MODEL = Path(__file__).resolve().parent.parent / "assets" / "reference"


@dataclass
class SynthResult:
    audio: np.ndarray
    sample_rate: int
    codes: np.ndarray
    guard_hits: int = 0  # phones ended by the length guard
    truncated: bool = False  # the whole item hit max_seconds


@dataclass
class GenerationSettings:
    temperature: float = 1.0
    top_p: float = 0.8
    seed: int = 0
    max_phone_seconds: float = 0.6
    max_seconds: float = 20.0
    any_move_on: bool = True  # time phones by the probability of any phone/end token (see choose_tokens)
    # "static": preallocated KV cache, speech/stop rows of the head only; "static-int8": the same with int8
    # weight copies in the decode step (CPU only, lossy, faster at small batches); "hf": HF forward
    decoder: str = "static"
    # > 0: also cut an item at this many times the length its prompt's speaking rate predicts
    # (prompt frames per prompt phone x target phones): a broken model's babble ends early
    max_length_ratio: float = 0.0
    drop_finished: bool = True  # rows whose item ended leave the batch (same output, fewer row-steps)


def item_uniforms(seed: int, item: int, steps: int, device) -> torch.Tensor:
    """(steps, 2) uniform draws owned by one item: column 0 decides moving on, column 1 picks the code.

    Each item draws from its own stream, seeded by (seed, item), so what it says depends on the
    seed and on the item only: not on which other items share its batch, on the batch size, or
    on rows leaving the batch as they finish (see ``StaticDecoder.keep_rows``).
    """
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(item)]).generate_state(1)[0]))
    return torch.rand(steps, 2, generator=gen).to(device)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor | None) -> torch.Tensor:
    """Greedy when temperature == 0, else nucleus sampling by inverse CDF with one uniform ``u`` per row."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    if top_p < 1.0:
        sorted_p = sorted_p * (sorted_p.cumsum(dim=-1) - sorted_p < top_p)
    cdf = sorted_p.cumsum(dim=-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None].contiguous(), right=True).clamp_(max=cdf.shape[1] - 1)
    return order.gather(1, pick).squeeze(1)


def choose_tokens(logits: torch.Tensor, lo: int, hi: int, nxt_ids: torch.Tensor, settings: GenerationSettings,
                  u: torch.Tensor | None, move_on: slice | None = None) -> torch.Tensor:
    """Per row: move on to ``nxt_ids`` (next phone or end) or emit a speech token from [lo, hi).

    The move-on decision is taken with the model's own probability of *any* non-speech token
    (``move_on``: phones and end; by default just ``nxt_ids``) at temperature 1 and without a
    nucleus cut; then a speech token is sampled with temperature and top-p. Two things make
    phones last far too long otherwise: the mass a small model spreads over the wrong next
    phone is timing information too, and a tempered nucleus draw against 4096 speech codes
    moves mass away from the single move-on token. ``u`` (rows, 2): the rows' uniform draws.
    """
    speech = logits[:, lo:hi]
    if move_on is None:
        adv_logit = logits.gather(1, nxt_ids[:, None]).squeeze(1)
    else:
        adv_logit = torch.logsumexp(logits[:, move_on].float(), dim=1)
    if settings.temperature <= 0:
        advance = adv_logit > speech.max(dim=-1).values
        codes = speech.argmax(dim=-1) + lo
    else:
        lse = torch.logsumexp(torch.cat([speech.float(), adv_logit[:, None].float()], dim=1), dim=1)
        p_adv = (adv_logit.float() - lse).exp()
        advance = u[:, 0] < p_adv
        codes = sample_next(speech, settings.temperature, settings.top_p, u[:, 1]) + lo
    return torch.where(advance, nxt_ids, codes)


class _HFSteps:
    """HF forward with its growing cache: the reference the fast path is tested against."""

    offset = 0  # logit column j is token id j

    def __init__(self, model):
        self.model = model

    def prefill(self, ids, mask):
        self.mask = mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        self.past = output_cache(out)
        return out.logits[:, -1]

    def step(self, ids):
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        pos = self.mask.sum(-1, keepdim=True) - 1
        out = self.model(input_ids=ids[:, None], attention_mask=self.mask, position_ids=pos, use_cache=True,
                         **cache_kwargs(self.model, self.past))
        self.past = output_cache(out)
        return out.logits[:, -1]


DECODERS = ("static", "static-int8", "hf")


def check_decoder(name: str, device) -> None:
    """One-line errors for a decoder name that does not exist or cannot run on ``device``."""
    if name not in DECODERS:
        raise ValueError(f"decoder={name!r}: use static (default), static-int8 (CPU only) or hf")
    if name == "static-int8" and torch.device(device).type != "cpu":
        raise ValueError(f"decoder=static-int8 is a CPU path and the model is on {device}; use decoder=static there")


def _decoder(model, vocab: Vocab, settings: GenerationSettings, batch: int, max_len: int):
    """The decode path: logits come back as columns ``offset..`` of the vocabulary."""
    check_decoder(settings.decoder, model.device)
    if settings.decoder == "hf":
        return _HFSteps(model)
    int8 = settings.decoder == "static-int8"
    from spade_tts.decoding import StaticDecoder

    # only speech_end, the phones and the speech codes can follow <speech_start>: the head keeps those rows
    # on a GPU each step is one CUDA-graph replay (launch-bound otherwise); rows then stay in the batch
    dec = StaticDecoder(model, max_batch=batch, max_len=max_len, head_rows=slice(vocab.speech_end, vocab.size),
                        cuda_graphs=model.device.type == "cuda", int8_weights=int8)
    dec.offset = vocab.speech_end
    return dec


@torch.no_grad()
def generate_codes(model: LlamaForCausalLM, vocab: Vocab, prompts: list[list[int]], targets: list[list[int]],
                   tokens_per_second: float, settings: GenerationSettings, item_ids: list[int] | None = None,
                   max_codes: list[int] | None = None) -> list[tuple[list[int], int, bool]]:
    """Decode speech codes for a batch; returns (codes, guard hits, truncated) per item.

    ``prompts`` end with ``<speech_start>`` + prompt speech; ``targets`` are the target phone ids
    (the first is forced right away). Prompts are left-padded so that all items step together;
    rows that finish leave the batch (when the decoder can drop them), so one long item does not
    make the others pay for its steps. ``item_ids`` number the items' random streams (default:
    their positions); ``max_codes`` caps each item's length (default: ``max_seconds``).
    """
    device = next(model.parameters()).device
    bsz = len(prompts)
    item_ids = list(range(bsz)) if item_ids is None else list(item_ids)
    first = [p + [t[0]] for p, t in zip(prompts, targets)]
    width = max(len(x) for x in first)
    ids = torch.full((bsz, width), vocab.pad, dtype=torch.long)
    mask = torch.zeros((bsz, width), dtype=torch.long)
    for b, x in enumerate(first):
        ids[b, width - len(x):] = torch.tensor(x)
        mask[b, width - len(x):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pointer = [1] * bsz  # index of the next target phone to force
    frames_in_phone = [0] * bsz
    codes: list[list[int]] = [[] for _ in range(bsz)]
    guard_hits = [0] * bsz
    truncated = [False] * bsz
    max_phone = max(1, int(settings.max_phone_seconds * tokens_per_second))
    max_total = int(settings.max_seconds * tokens_per_second)
    caps = [max_total] * bsz if max_codes is None else [max(1, min(max_total, int(c))) for c in max_codes]
    steps = max_total + max(len(t) for t in targets) + 1
    uniforms = (torch.stack([item_uniforms(settings.seed, i, steps, device) for i in item_ids])
                if settings.temperature > 0 else None)
    dec = _decoder(model, vocab, settings, bsz, width + steps)
    can_drop = settings.drop_finished and hasattr(dec, "keep_rows") and not getattr(dec, "static", True)
    off = dec.offset
    lo, hi = vocab.speech_offset - off, vocab.size - off
    # speech_end sits just before the phones in the vocabulary: one slice covers every move-on token
    move_on = slice(vocab.speech_end - off, vocab.speech_offset - off) if settings.any_move_on else None
    logits = dec.prefill(ids, mask)
    rows = list(range(bsz))  # the items still in the batch, in batch order
    done = [False] * bsz
    step = 0
    while rows:
        nxt_list = [targets[b][pointer[b]] if pointer[b] < len(targets[b]) else vocab.speech_end for b in rows]
        nxt_ids = torch.tensor(nxt_list, device=device)
        u = uniforms[rows, step] if uniforms is not None else None
        choice = (choose_tokens(logits, lo, hi, nxt_ids - off, settings, u, move_on) + off).tolist()
        for j, b in enumerate(rows):
            if done[b]:
                choice[j] = vocab.speech_end  # a finished row still in the batch steps with a known token; ignored
                continue
            if choice[j] >= vocab.speech_offset and frames_in_phone[b] >= max_phone:
                choice[j] = nxt_list[j]  # length guard: this phone has lasted too long
                guard_hits[b] += 1
            if choice[j] >= vocab.speech_offset:
                codes[b].append(choice[j] - vocab.speech_offset)
                frames_in_phone[b] += 1
                if len(codes[b]) >= caps[b]:
                    done[b] = truncated[b] = True
            elif choice[j] == vocab.speech_end:
                done[b] = True
            else:
                pointer[b] += 1
                frames_in_phone[b] = 0
        step += 1
        live = [j for j, b in enumerate(rows) if not done[b]]
        if not live:
            break
        if can_drop and len(live) < len(rows):
            dec.keep_rows(live)
            rows = [rows[j] for j in live]
            choice = [choice[j] for j in live]
        logits = dec.step(torch.tensor(choice, device=device))
    return [(codes[b], guard_hits[b], truncated[b]) for b in range(bsz)]


class ReferenceTTS:
    """The built-in LLM-TTS: phones in, LLaSA-style speech tokens out, Griffin-Lim to audio."""

    def __init__(self, model: LlamaForCausalLM, vocab: Vocab, codec):
        self.model, self.vocab, self.codec = model.eval(), vocab, codec

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = "cpu") -> "ReferenceTTS":
        from spade_tts.codec.tokenizer import SpeechTokenizer

        path = Path(path) if path else BUILTIN_MODEL
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no model in {path}: expected a Hugging Face folder with config.json "
                                    "(train one with `spade train-reference`)")
        vocab = Vocab.load(path)
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
        return cls(model, vocab, SpeechTokenizer.load(path))

    def synthesize(self, texts: list[str], prompt_audio: np.ndarray, prompt_text: str,
                   settings: GenerationSettings | None = None, batch_size: int = 8) -> list[SynthResult]:
        """Speak each text in the voice of ``prompt_audio`` (16 kHz mono; its transcript ``prompt_text``)."""
        n = len(texts)
        return self.synthesize_pairs(texts, [prompt_audio] * n, [prompt_text] * n, settings, batch_size)

    def synthesize_pairs(self, texts: list[str], prompt_audios: list[np.ndarray], prompt_texts: list[str],
                         settings: GenerationSettings | None = None, batch_size: int = 8,
                         progress: str = "") -> list[SynthResult]:
        """Item i speaks ``texts[i]`` in the voice of ``prompt_audios[i]``; items decode in batches.

        Item i samples from its own random stream (seed, i), so the batch size does not change
        what it says. ``progress``: a label for a progress bar over the batches ('' = none).
        """
        from spade_tts.audio import check_speech
        from spade_tts.data.voices import g2p
        from spade_tts.text import check_english

        settings = settings or GenerationSettings()
        encoded: dict[int, tuple] = {}
        prompts, targets, caps = [], [], []
        for text, audio, ptext in zip(texts, prompt_audios, prompt_texts):
            check_english(text, what="target text")
            if id(audio) not in encoded:  # one prompt shared by many texts is checked and encoded once
                check_speech(audio, 16000, what="prompt audio")
                check_english(ptext, what="prompt text")
                encoded[id(audio)] = (self.codec.encode(audio), self.vocab.phone_ids(g2p(ptext)))
            codes, pphones = encoded[id(audio)]
            targets.append(self.vocab.phone_ids(g2p(text)))
            prompts.append(self.vocab.prompt_ids(pphones, targets[-1], codes))
            caps.append(settings.max_length_ratio * len(codes) / max(1, len(pphones)) * len(targets[-1]))
        results = []
        tps = self.codec.config.tokens_per_second
        starts = range(0, len(texts), batch_size)
        for start in (tqdm(starts, desc=progress, unit="batch", leave=False) if progress else starts):
            sl = slice(start, start + batch_size)
            cap = [max(c, tps) for c in caps[sl]] if settings.max_length_ratio > 0 else None
            for codes, hits, cut in generate_codes(self.model, self.vocab, prompts[sl], targets[sl], tps, settings,
                                                   item_ids=range(start, start + len(prompts[sl])), max_codes=cap):
                if cut:
                    warnings.warn(f"length guard: generation cut at {len(codes) / tps:.1f} s (max_seconds="
                                  f"{settings.max_seconds}, max_length_ratio={settings.max_length_ratio})", stacklevel=2)
                audio = self.codec.decode(codes, seed=settings.seed)
                results.append(SynthResult(audio, 16000, np.asarray(codes, dtype=np.int64), hits, cut))
        return results
