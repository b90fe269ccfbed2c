"""Text checks and the normalisation that word error rates are computed on.

WER is only comparable with published numbers if both sides are normalised the same way,
so ``normalize_for_wer`` follows Seed-TTS-eval (lower-case, punctuation removed except
apostrophes). The English check exists because the built-in model's front end drops
every non-ASCII character: Chinese text would be synthesised as silence with no error.
"""
from __future__ import annotations

import unicodedata

NON_LATIN_LIMIT = 0.2  # share of letters outside the Latin script that makes text non-English

# Curly quotes, modifier letters and accents that people and ASR type in place of "'".
_APOSTROPHES = str.maketrans({c: "'" for c in "\u2018\u2019\u201b\u02bc\u02b9\u0060\u00b4\u2032"})


class TextError(ValueError):
    """Text that cannot be used; the message says why and what to do."""


def normalize_for_wer(text: str) -> str:
    """Seed-TTS-eval normalisation, with two deliberate deviations.

    Dashes and slashes become spaces instead of vanishing, so "well-known" and "well known"
    match instead of counting two errors against "wellknown". Apostrophes at word edges
    (quotation marks written as ') are dropped, so quoting does not count as an error,
    while "don't" and "it's" keep theirs.
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch == "'":
            out.append(ch)
        elif ch.isspace() or cat == "Pd" or ch == "/":
            out.append(" ")
        elif cat[0] not in "PS":  # punctuation and symbols vanish, as in Seed-TTS-eval
            out.append(ch)
    words = (w.strip("'") for w in "".join(out).split())
    return " ".join(w for w in words if w)


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "UNKNOWN")
    return "CJK" if name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL")) else name.split()[0].title()


def check_english(text: str, *, what: str = "text") -> None:
    """Refuse text the built-in model cannot read; accented Latin letters (café) are allowed."""
    if not isinstance(text, str) or not text.strip():
        raise TextError(f"{what} is empty: give the sentence to speak")
    letters = [c for c in text if c.isalpha()]
    fix = "spade-tts's built-in model reads English only"
    if not letters:
        raise TextError(f"{what} {text!r} has no letters: {fix}; write numbers and symbols out as English words")
    foreign = [c for c in letters if not unicodedata.name(c, "").startswith("LATIN")]
    if len(foreign) > NON_LATIN_LIMIT * len(letters):
        scripts = sorted({_script(c) for c in foreign})
        short = text if len(text) <= 40 else text[:37] + "..."
        raise TextError(
            f"{what} {short!r} is not English ({100 * len(foreign) / len(letters):.0f} % of its letters are {'/'.join(scripts)}): "
            f"{fix}; translate it to English or use a multilingual checkpoint"
        )

