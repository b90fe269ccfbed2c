"""What every scorer checks the same way: the clip it is given and the local folder it loads.

One home for these rules, so that Whisper, the speaker encoders and the MOS predictors reject
the same bad input with the same one-line message. Model folders must be local directories:
evaluation runs offline, and a hub name would make transformers try the network.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from spade_tts.audio import AudioError

SAMPLE_RATE = 16000  # every scorer works on 16 kHz mono (spade_tts.audio.to_mono_16k)


def checked_audio(audio16k: np.ndarray, name: str = "audio") -> np.ndarray:
    """float32 mono clip, or AudioError: a 2-D array is a missed mono mix, NaN/Inf a corrupt model output."""
    audio = np.asarray(audio16k, dtype=np.float32)
    if audio.ndim != 1:
        raise AudioError(f"{name} has shape {audio.shape}: pass 16 kHz mono (spade_tts.audio.to_mono_16k)")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{name} contains NaN or Inf samples: the model output is corrupt; regenerate it")
    return audio


def _reason(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def local_config(folder, role: str, expected: str):
    """The transformers config of a local model folder; ValueError naming the folder otherwise.

    ``role`` names the scorer ("speaker", "MOS") and ``expected`` what to pass instead.
    """
    d = Path(folder)
    if not d.is_dir():
        raise ValueError(f"{role} model {str(folder)!r} is not a local directory: pass {expected}")
    if not (d / "config.json").is_file():
        raise ValueError(f"{role} model folder {d} holds no config.json: pass {expected}")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(d), local_files_only=True)
    except Exception as e:  # malformed JSON, unknown model_type
        raise ValueError(f"{role} model folder {d}: transformers cannot read config.json ({_reason(e)}): pass {expected}") from e


def load_feature_extractor(folder, role: str, expected: str):
    """The folder's own feature extractor; refused unless it takes 16 kHz audio, the rate every scorer uses."""
    from transformers import AutoFeatureExtractor

    try:
        fe = AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise ValueError(
            f"{role} model folder {folder} has no usable feature extractor (preprocessor_config.json: {_reason(e)}): pass {expected}"
        ) from e
    rate = getattr(fe, "sampling_rate", None)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{role} model folder {folder} expects {rate} Hz audio, but the scorers pass 16 kHz: pass {expected}")
    return fe


def load_model(auto_class, folder, role: str, expected: str, device: str):
    """``auto_class.from_pretrained`` in eval mode on ``device``; refused if any weight would be freshly
    initialised, since a random head scores plausibly but means nothing."""
    try:
        net, info = auto_class.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except Exception as e:  # missing or mismatched weight files
        raise ValueError(f"{role} model folder {folder} does not load as {auto_class.__name__} ({_reason(e)}): pass {expected}") from e
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(
            f"{role} model folder {folder} lacks trained weights for {', '.join(missing[:3])}"
            f"{' and more' if len(missing) > 3 else ''}, so they would be random: pass {expected}"
        )
    return net.to(device).eval()


def model_inputs(feature_extractor, net, audio: np.ndarray) -> dict:
    """The feature extractor's tensors for one clip, on the model's device; floats in the model's dtype.

    One unpadded clip needs no attention mask (it would be all ones), and passing one makes
    WavLM's attention emit a torch deprecation warning on every call, so it is dropped."""
    feats = feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    feats.pop("attention_mask", None)
    return {k: v.to(net.device, net.dtype) if v.is_floating_point() else v.to(net.device) for k, v in feats.items()}
