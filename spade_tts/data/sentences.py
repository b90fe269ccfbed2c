"""English sentences from Debian's fortune files, an offline text source that installs by name.

The fortunes are quotations and jokes written by people, so the sentences are natural English
with varied syntax, unlike synthetic templates. Only plain sentences are kept (4-20 words,
capitalised, ending in . ! or ?, letters and light punctuation only) so that every voice
reads them the same way and Whisper's spelling can be compared with the reference.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

FORTUNE_DIRS = ("/usr/share/games/fortunes", "/usr/share/fortunes")
_PLAIN = re.compile(r"[A-Z][A-Za-z ,;'\-]*[a-z][.!?]")
_SPLIT = re.compile(r"(?<=[.!?])\s+")
_SHOUTED = re.compile(r"\b[A-Z]{2,}")  # acronyms and capitals are read letter by letter by some voices


class CorpusTextError(RuntimeError):
    pass


def _fortune_files() -> list[Path]:
    files: list[Path] = []
    for d in FORTUNE_DIRS:
        p = Path(d)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and "." not in f.name)
    return files


def extract_sentences(text: str, min_words: int = 4, max_words: int = 20) -> list[str]:
    """Plain sentences of a fortune file, in file order (duplicates kept)."""
    out = []
    for fortune in text.split("\n%\n"):
        flat = " ".join(fortune.split())
        for sent in _SPLIT.split(flat):
            n = len(sent.split())
            if min_words <= n <= max_words and _PLAIN.fullmatch(sent) and "--" not in sent and not _SHOUTED.search(sent):
                out.append(sent)
    return out


def load_sentences(min_words: int = 4, max_words: int = 20) -> list[str]:
    """All distinct plain sentences, sorted so that the list is identical on every machine."""
    files = _fortune_files()
    if not files:
        raise CorpusTextError("no fortune files found; fix: apt-get install fortunes fortunes-min")
    seen: set[str] = set()
    for f in files:
        seen.update(extract_sentences(f.read_text(encoding="utf-8", errors="ignore"), min_words, max_words))
    return sorted(seen)


def split_sentences(sentences: list[str], num_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """A seeded (train, held-out) split; held-out sentences never appear in training."""
    if num_heldout >= len(sentences):
        raise CorpusTextError(f"asked for {num_heldout} held-out sentences but only {len(sentences)} exist")
    order = list(sentences)
    random.Random(seed).shuffle(order)
    return order[num_heldout:], sorted(order[:num_heldout])
