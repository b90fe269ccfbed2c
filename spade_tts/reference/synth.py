"""Zero-shot synthesis with the reference LM: batched, KV-cached, phone-forced decoding.

At every step the model may emit a speech token or move on to the next phone of the target
(the only phone it is allowed), or, after the last phone, end the speech. Nothing else is
sampled, so the text is always read in order. Two guards stop a runaway decoder: a phone that
lasts longer than ``max_phone_seconds`` is ended by force, and the whole item is cut at
``max_seconds``; both are counted and reported rather than failing silently.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
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
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    max_phone_seconds: float = 0.6
    max_seconds: float = 20.0
    extra: dict = field(default_factory=dict)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> torch.Tensor:
    """Greedy when temperature == 0, else nucleus sampling; ``logits`` already masked to -inf."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(dim=-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate_codes(model: LlamaForCausalLM, vocab: Vocab, prompts: list[list[int]], targets: list[list[int]],
                   tokens_per_second: float, settings: GenerationSettings) -> list[tuple[list[int], int, bool]]:
    """Decode speech codes for a batch; returns (codes, guard hits, truncated) per item.

    ``prompts`` end with ``<speech_start>`` + prompt speech; ``targets`` are the target phone ids
    (the first is forced right away). Prompts are left-padded so that all items step together.
    """
    device = next(model.parameters()).device
    bsz = len(prompts)
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
    done = [False] * bsz
    truncated = [False] * bsz
    max_phone = max(1, int(settings.max_phone_seconds * tokens_per_second))
    max_total = int(settings.max_seconds * tokens_per_second)
    gen = torch.Generator(device=device).manual_seed(settings.seed) if settings.temperature > 0 else None
    lo, hi = vocab.speech_offset, vocab.size
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past = output_cache(out)
    logits = out.logits[:, -1]
    while not all(done):
        allowed = torch.full_like(logits, float("-inf"))
        allowed[:, lo:hi] = 0.0
        for b in range(bsz):
            nxt = targets[b][pointer[b]] if pointer[b] < len(targets[b]) else vocab.speech_end
            allowed[b, nxt] = 0.0
        choice = sample_next(logits + allowed, settings.temperature, settings.top_p, gen).tolist()
        for b in range(bsz):
            if done[b]:
                choice[b] = vocab.pad
                continue
            nxt = targets[b][pointer[b]] if pointer[b] < len(targets[b]) else vocab.speech_end
            if choice[b] >= lo and frames_in_phone[b] >= max_phone:
                choice[b] = nxt  # length guard: this phone has lasted too long
                guard_hits[b] += 1
            if choice[b] >= lo:
                codes[b].append(choice[b] - lo)
                frames_in_phone[b] += 1
                if len(codes[b]) >= max_total:
                    done[b] = truncated[b] = True
            elif choice[b] == vocab.speech_end:
                done[b] = True
            else:
                pointer[b] += 1
                frames_in_phone[b] = 0
        if all(done):
            break
        step_ids = torch.tensor(choice, device=device)[:, None]
        mask = torch.cat([mask, torch.ones((bsz, 1), dtype=mask.dtype, device=device)], dim=1)
        pos = (mask.sum(-1, keepdim=True) - 1)
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=pos, use_cache=True, **cache_kwargs(model, past))
        past = output_cache(out)
        logits = out.logits[:, -1]
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
        from spade_tts.audio import check_speech
        from spade_tts.data.voices import g2p
        from spade_tts.text import check_english

        settings = settings or GenerationSettings()
        check_speech(prompt_audio, 16000, what="prompt audio")
        check_english(prompt_text, what="prompt text")
        for t in texts:
            check_english(t, what="target text")
        prompt_codes = self.codec.encode(prompt_audio)
        prompt_phones = self.vocab.phone_ids(g2p(prompt_text))
        results = []
        tps = self.codec.config.tokens_per_second
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            targets = [self.vocab.phone_ids(g2p(t)) for t in chunk]
            prompts = [self.vocab.prompt_ids(prompt_phones, t, prompt_codes) for t in targets]
            for codes, hits, cut in generate_codes(self.model, self.vocab, prompts, targets, tps, settings):
                if cut:
                    warnings.warn(f"length guard: generation cut at {settings.max_seconds} s", stacklevel=2)
                audio = self.codec.decode(codes, seed=settings.seed)
                results.append(SynthResult(audio, 16000, np.asarray(codes), hits, cut))
        return results
