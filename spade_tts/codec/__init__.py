"""Speech tokenizers of the built-in model: k-means on log-mel (``tokenizer.py``) or learned FSQ (``fsq.py``)."""
from __future__ import annotations

import json
from pathlib import Path

CODEC_CONFIG, CODEC_WEIGHTS = "codec.json", "codec.safetensors"  # a tokenizer folder's two files
CODEC_FILES = (CODEC_CONFIG, CODEC_WEIGHTS)


def load_tokenizer(directory: str | Path):
    """The tokenizer saved in ``directory`` (codec.json + codec.safetensors), whichever kind it is."""
    d = Path(directory)
    if not all((d / f).is_file() for f in CODEC_FILES):
        raise FileNotFoundError(f"no speech tokenizer in {d} (codec.json + codec.safetensors); run `spade codec fit`")
    config = json.loads((d / CODEC_CONFIG).read_text())
    if config.get("kind", "kmeans") == "fsq":
        from spade_tts.codec.fsq import FSQTokenizer

        return FSQTokenizer.from_files(config, d / CODEC_WEIGHTS)
    from spade_tts.codec.tokenizer import SpeechTokenizer

    return SpeechTokenizer.load(d)
