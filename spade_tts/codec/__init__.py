"""Speech tokenizers of the built-in model: k-means on log-mel (``tokenizer.py``) or learned FSQ (``fsq.py``)."""
from __future__ import annotations

import json
from pathlib import Path


def load_tokenizer(directory: str | Path):
    """The tokenizer saved in ``directory`` (codec.json + codec.safetensors), whichever kind it is."""
    d = Path(directory)
    if not (d / "codec.json").is_file() or not (d / "codec.safetensors").is_file():
        raise FileNotFoundError(f"no speech tokenizer in {d} (codec.json + codec.safetensors); run `spade codec fit`")
    config = json.loads((d / "codec.json").read_text())
    if config.get("kind", "kmeans") == "fsq":
        from spade_tts.codec.fsq import FSQTokenizer

        return FSQTokenizer.from_files(config, d / "codec.safetensors")
    from spade_tts.codec.tokenizer import SpeechTokenizer

    return SpeechTokenizer.load(d)
