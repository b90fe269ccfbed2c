"""One vocabulary of control tokens, phones and speech codes, laid out like LLaSA's.

LLaSA appends its 65,536 codec tokens after the text vocabulary of a Llama; here the "text
vocabulary" is the CMU phone set (the built-in model reads phones because at this scale
letters do not align with sound) and the codec tokens follow it as ``<|s_N|>``.

Sequence layout (one training example, or a zero-shot prompt when cut after the prompt speech)::

    <bos> <text_start> phones(prompt text) phones(target text) <text_end>
    <speech_start> s(prompt speech ...) ph_1 s s s ph_2 s s ... ph_n s s <speech_end>

The prompt's speech tokens come as they are (any recording can be a prompt, no timings
needed); the target's speech is interleaved with its phones, each phone followed by exactly
the tokens spoken during it. The model therefore learns *when to move on* to the next
phone, and at synthesis time the phone tokens are forced in order: the model can stretch or
shorten a phone but cannot skip, repeat or invent text. That is the alignment that a 10-20M
parameter model does not learn by itself from a few hours of speech.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SPECIALS = ["<|pad|>", "<|bos|>", "<|text_start|>", "<|text_end|>", "<|speech_start|>", "<|speech_end|>"]
PHONES = [
    "pau", "aa", "ae", "ah", "ao", "aw", "ax", "axr", "ay", "b", "ch", "d", "dh", "eh", "er", "ey", "f", "g",
    "hh", "ih", "iy", "jh", "k", "l", "m", "n", "ng", "ow", "oy", "p", "r", "s", "sh", "t", "th", "uh", "uw",
    "v", "w", "y", "z", "zh",
]
# Engine-specific spellings folded onto the shared set.
PHONE_ALIASES = {"h#": "pau", "brth": "pau", "ssil": "pau", "sil": "pau", "#": "pau", "el": "l", "em": "m",
                 "en": "n", "nx": "n", "dx": "t", "ix": "ih", "hv": "hh", "ux": "uw", "ax-h": "ax"}


@dataclass(frozen=True)
class Vocab:
    num_speech: int

    @property
    def phone_offset(self) -> int:
        return len(SPECIALS)

    @property
    def speech_offset(self) -> int:
        return len(SPECIALS) + len(PHONES)

    @property
    def size(self) -> int:
        return self.speech_offset + self.num_speech

    def special(self, name: str) -> int:
        return SPECIALS.index(f"<|{name}|>")

    @property
    def pad(self) -> int:
        return self.special("pad")

    @property
    def speech_end(self) -> int:
        return self.special("speech_end")

    def phone_id(self, phone: str) -> int:
        p = PHONE_ALIASES.get(phone.lower(), phone.lower())
        if p not in PHONES:
            raise ValueError(f"unknown phone {phone!r}: not in the CMU set the built-in model reads")
        return self.phone_offset + PHONES.index(p)

    def phone_ids(self, phones: list[str]) -> list[int]:
        return [self.phone_id(p) for p in phones]

    def is_phone(self, token: int) -> bool:
        return self.phone_offset <= token < self.speech_offset

    def speech_ids(self, codes) -> list[int]:
        return [self.speech_offset + int(c) for c in codes]

    def prompt_ids(self, prompt_phones: list[int], target_phones: list[int], prompt_codes) -> list[int]:
        """Everything before the first forced target phone."""
        return ([self.special("bos"), self.special("text_start")] + prompt_phones + target_phones
                + [self.special("text_end"), self.special("speech_start")] + self.speech_ids(prompt_codes))

    def training_ids(self, prompt_phones, target_phones, prompt_codes, target_codes, frames_per_phone,
                     prompt_loss: bool = False) -> tuple[list[int], int]:
        """(ids, the position after which next-token losses count): from the first target phone on, or from the
        first prompt speech token with ``prompt_loss`` (attempt 1's choice; the prompt is context at synthesis)."""
        ids = self.prompt_ids(prompt_phones, target_phones, [])
        loss_from = len(ids) - 1
        ids += self.speech_ids(prompt_codes)
        if not prompt_loss:
            loss_from = len(ids) - 1
        pos = 0
        for ph, n in zip(target_phones, frames_per_phone):
            ids.append(ph)
            ids += self.speech_ids(target_codes[pos : pos + n])
            pos += n
        ids.append(self.speech_end)
        return ids, loss_from

    def tokens(self) -> list[str]:
        return SPECIALS + PHONES + [f"<|s_{i}|>" for i in range(self.num_speech)]

    def save(self, directory: str | Path) -> None:
        Path(directory, "spade_vocab.json").write_text(json.dumps({"num_speech": self.num_speech, "tokens": self.tokens()}))

    @classmethod
    def load(cls, directory: str | Path) -> "Vocab":
        path = Path(directory, "spade_vocab.json")
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: {directory} is not a spade-tts reference model directory")
        data = json.loads(path.read_text())
        vocab = cls(int(data["num_speech"]))
        if data["tokens"] != vocab.tokens():
            raise ValueError(f"{path} lists a different vocabulary than this version of spade-tts")
        return vocab


def frames_per_phone(phone_ends: list[float], frames_per_second: float, num_frames: int) -> list[int]:
    """Frames spoken during each phone, from the engine's phone end times; they sum to ``num_frames``."""
    bounds = [min(num_frames, int(round(e * frames_per_second))) for e in phone_ends]
    bounds[-1] = num_frames
    out, prev = [], 0
    for b in bounds:
        b = max(b, prev)
        out.append(b - prev)
        prev = b
    return out
