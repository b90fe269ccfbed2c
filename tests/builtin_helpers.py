"""Drive the builtin family's phone-forced rule from phone ids, as the tests of its decoding need."""
from __future__ import annotations

from spade_tts.families.builtin import PhoneRequest
from spade_tts.families.generate import generate


def phone_forced(tts, prompts: list[list[int]], targets: list[list[int]], item_ids=None, **settings):
    """(codes, guard hits, truncated) per item: ``prompts`` end with the prompt speech, ``targets`` are phone ids
    (the first is forced at once, as ``BuiltinSpeechLM.generation_request`` does)."""
    requests = [PhoneRequest(p + [t[0]], target_phones=t) for p, t in zip(prompts, targets)]
    gens, _ = generate(tts, requests, tts.generation_defaults(**settings), item_ids)
    return [([int(c) for c in tts.ids_to_codes(tts.speech_ids(g.ids))], g.guard_hits, g.truncated) for g in gens]
