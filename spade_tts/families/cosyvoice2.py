"""CosyVoice 2 (FunAudioLLM, CosyVoice2-0.5B): the ``Qwen2LM`` text-to-speech-token LM, in a unified view.

Upstream's ``cosyvoice.llm.llm.Qwen2LM`` is not an HF causal LM: it holds ``llm_embedding``
(Embedding(2, d): row 0 sos/eos, row 1 task id), ``llm`` (``Qwen2Encoder``, whose ``.model`` is a
Qwen2ForCausalLM built from the ``CosyVoice-BlankEN`` folder), ``speech_embedding``
(Embedding(6561 + 3, d)) and ``llm_decoder`` (Linear(d, 6561 + 3)). A checkpoint folder has
``llm.pt`` (that module's state dict), ``cosyvoice2.yaml``, ``CosyVoice-BlankEN/`` (HF Qwen2 config,
tokenizer, weights) and the flow/vocoder/speech-tokenizer files.

:class:`CosyVoice2LM` rebuilds that module with the same submodule names (``llm.pt`` loads
strictly) and gives spade one token space: text id t (< text vocabulary V, the Qwen2 config's
``vocab_size``) is t, sos/eos is V, task id is V + 1, speech token k is V + 2 + k. Its forward embeds
each id with its own table (text: Qwen2's ``embed_tokens``), runs the Qwen2 decoder on
``inputs_embeds`` and returns logits over the unified space: speech rows from ``llm_decoder``, a
constant -1e4 on every other row (never picked: generation samples only speech + end rows).

Sequence, as upstream's ``Qwen2LM.inference`` builds it: [sos/eos] + prompt text + text +
[task id] + prompt speech tokens; the model continues with speech tokens; speech token 6561 ends.
Codes are 1-D arrays of speech tokens in [0, 6561) (25 tokens/s, speech_tokenizer_v2).
"""
from __future__ import annotations

import copy
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spade_tts.families.base import GenerationConfig, SpeechLayout, SpeechLM
from spade_tts.families.codec_hooks import cached, require
from spade_tts.families.hf import link_or_copy, load_tokenizer, read_config, resolve_dtype

SPEECH_TOKENS = 6561  # speech_token_size; token 6561 ends the speech, 6562/6563 are bistream fillers
EXTRA_ROWS = 3
BLANK = "CosyVoice-BlankEN"
LLM_FILE = "llm.pt"
NEG = -1e4
SAMPLE_RATE = 24000
S3_ONNX = "speech_tokenizer_v2.onnx"  # the speech tokenizer a CosyVoice2-0.5B folder ships
# what upstream's CosyVoice2Tokenizer (cosyvoice/tokenizer/tokenizer.py) adds to the BlankEN tokenizer at run time
UPSTREAM_SPECIALS = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "additional_special_tokens": [
    "<|im_start|>", "<|im_end|>", "<|endofprompt|>", "[breath]", "<strong>", "</strong>", "[noise]", "[laughter]",
    "[cough]", "[clucking]", "[accent]", "[quick_breath]", "<laughter>", "</laughter>", "[hissing]", "[sigh]",
    "[vocalized-noise]", "[lipsmack]", "[mn]"]}


class CosyVoice2Output(dict):
    """``.logits`` and the KV cache (``out["cache"]``/``out.cache``: what spade_tts.hf_compat reads)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class CosyVoice2LM(nn.Module):
    """Upstream's Qwen2LM parameters under their names, with a forward over the unified id space."""

    def __init__(self, qwen, speech_token_size: int = SPEECH_TOKENS):
        super().__init__()
        d = qwen.config.hidden_size
        self.llm_embedding = nn.Embedding(2, d)
        self.llm = nn.Module()  # upstream's Qwen2Encoder: the HF model sits at .model
        self.llm.model = qwen
        self.speech_embedding = nn.Embedding(speech_token_size + EXTRA_ROWS, d)
        self.llm_decoder = nn.Linear(d, speech_token_size + EXTRA_ROWS)
        self.text_vocab = int(qwen.config.vocab_size)
        self.speech_token_size = speech_token_size
        # a copy of the Qwen2 config whose vocab_size is the unified space; pruning updates both configs' depth
        self.config = copy.deepcopy(qwen.config)
        self.config.vocab_size = self.text_vocab + 2 + speech_token_size + EXTRA_ROWS

    @property
    def speech_offset(self) -> int:
        return self.text_vocab + 2

    def get_input_embeddings(self):
        return self.llm.model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.llm_decoder

    def gradient_checkpointing_enable(self, **kw):
        self.llm.model.gradient_checkpointing_enable(**kw)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        v, s = self.text_vocab, self.speech_offset
        text = self.llm.model.get_input_embeddings()(ids.clamp(max=v - 1))
        special = self.llm_embedding((ids - v).clamp(0, 1))
        speech = self.speech_embedding((ids - s).clamp(0, self.speech_embedding.num_embeddings - 1))
        out = torch.where((ids < v)[..., None], text, special.to(text.dtype))
        return torch.where((ids >= s)[..., None], speech.to(text.dtype), out)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                **kw):
        from spade_tts.hf_compat import cache_kwargs, output_cache

        cache = kw.pop("cache", None) if past_key_values is None else past_key_values
        inner = self.llm.model.model
        extra = cache_kwargs(inner, cache) if cache is not None else {}
        out = inner(inputs_embeds=self.embed(input_ids), attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=use_cache, **extra)
        h = out.last_hidden_state
        speech = self.llm_decoder(h)
        rest = speech.new_full((*h.shape[:-1], self.speech_offset), NEG)
        logits = torch.cat([rest, speech], dim=-1)
        return CosyVoice2Output(logits=logits, cache=output_cache(out) if use_cache else None)


class CosyVoice2SpeechLM(SpeechLM):
    family = "cosyvoice2"

    def generation_defaults(self, **overrides) -> GenerationConfig:
        """Upstream's CosyVoice2-0.5B sampling (cosyvoice2.yaml: ras_sampling, top_p 0.8, top_k 25, win_size 10,
        tau_r 0.1) on unscaled logits."""
        settings = dict(temperature=1.0, top_p=0.8, top_k=25, ras_window=10, ras_tau=0.1)
        return GenerationConfig(**{**settings, **overrides})

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        # upstream picks the model class by the yaml's name (cosyvoice.yaml / cosyvoice2.yaml / cosyvoice3.yaml)
        return ((path / LLM_FILE).is_file() and (path / "cosyvoice2.yaml").is_file()
                and read_config(path / BLANK).get("model_type") == "qwen2")

    @classmethod
    def from_pretrained(cls, path, dtype="auto", device: str = "cpu") -> "CosyVoice2SpeechLM":
        from transformers import AutoConfig, Qwen2ForCausalLM

        path = Path(path)
        if not (path / LLM_FILE).is_file() or not (path / BLANK / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a CosyVoice 2 checkpoint: expected {LLM_FILE} and "
                                    f"{BLANK}/config.json (the CosyVoice2-0.5B folder)")
        state = torch.load(path / LLM_FILE, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) and "state_dict" in state else state
        config = AutoConfig.from_pretrained(path / BLANK)
        layers = {int(k.split(".")[4]) for k in state if k.startswith("llm.model.model.layers.")}
        if len(layers) != config.num_hidden_layers:
            raise ValueError(f"{path / LLM_FILE} has {len(layers)} decoder layers but {BLANK}/config.json says "
                             f"{config.num_hidden_layers}; they must agree")
        if "speech_embedding.weight" not in state:
            raise ValueError(f"{path / LLM_FILE} has no speech_embedding.weight: not a CosyVoice 2 Qwen2LM state dict")
        speech_size = int(state["speech_embedding.weight"].shape[0]) - EXTRA_ROWS
        qwen = Qwen2ForCausalLM(config)
        lm = CosyVoice2LM(qwen, speech_size)
        missing, unexpected = lm.load_state_dict(state, strict=False)
        tied = getattr(config, "tie_word_embeddings", False)
        missing = [k for k in missing if not (tied and k == "llm.model.lm_head.weight")]
        if missing or unexpected:
            raise ValueError(f"{path / LLM_FILE} does not match CosyVoice 2's Qwen2LM: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        dt = resolve_dtype(dtype)
        if dt == "auto":
            dt = state["llm_decoder.weight"].dtype
        lm.to(device=device, dtype=dt).eval()
        tokenizer = load_tokenizer(path / BLANK)
        tokenizer.add_special_tokens(UPSTREAM_SPECIALS)  # not saved: save_pretrained copies BlankEN's files as they were
        s = lm.speech_offset
        # upstream Qwen2LM.stop_token_ids: eos (6561) and the two rows after it end a generation
        layout = SpeechLayout(s, s + speech_size, tuple(s + speech_size + i for i in range(EXTRA_ROWS)))
        return cls(path, lm, tokenizer, layout)

    def save_pretrained(self, out) -> None:
        """``llm.pt`` (this module's state dict, upstream's key names) + ``CosyVoice-BlankEN`` at the new depth
        (config, weights of the inner Qwen2 and the tokenizer files) + the source folder's other files."""
        out = Path(out)
        (out / BLANK).mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            torch.save({k: v.detach().cpu() for k, v in self.lm.state_dict().items()}, out / LLM_FILE)
            self.lm.llm.model.save_pretrained(out / BLANK)
        src_blank = self.path / BLANK
        for src in sorted(src_blank.iterdir()) if src_blank.is_dir() else []:
            if not (out / BLANK / src.name).exists() and not src.name.endswith((".safetensors", ".bin")) \
                    and not src.name.endswith(".index.json"):
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, out / BLANK / src.name)
        for src in sorted(self.path.iterdir()):
            if src.name in (LLM_FILE, BLANK) or src.name.startswith(".") or (out / src.name).exists():
                continue
            if src.is_dir():
                shutil.copytree(src, out / src.name, copy_function=link_or_copy)
            else:
                link_or_copy(src, out / src.name)

    # -- unified id space -----------------------------------------------------------------------------------
    @property
    def sos_eos(self) -> int:
        return self.lm.text_vocab

    @property
    def task_id(self) -> int:
        return self.lm.text_vocab + 1

    @property
    def vocab_size(self) -> int:
        return int(self.lm.config.vocab_size)

    @property
    def pad_id(self) -> int:
        return self.sos_eos

    def _text(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        if any(i >= self.lm.text_vocab for i in ids):
            raise ValueError(f"a text id is outside the Qwen2 vocabulary ({self.lm.text_vocab})")
        return ids

    def prompt_ids(self, text: str, prompt_text: str = "", prompt_codes: np.ndarray | None = None) -> list[int]:
        ids = [self.sos_eos] + self._text(prompt_text) + self._text(text) + [self.task_id]
        if prompt_codes is not None and np.asarray(prompt_codes).size:
            ids += self.codes_to_ids(prompt_codes)
        return ids

    def codes_to_ids(self, codes: np.ndarray) -> list[int]:
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        if codes.size and (codes.min() < 0 or codes.max() >= self.lm.speech_token_size):
            raise ValueError(f"CosyVoice 2 speech tokens must be in [0, {self.lm.speech_token_size}), got "
                             f"{codes.min()}..{codes.max()}")
        return (codes + self.layout.speech_start).tolist()



    # -- codec (speech tokenizer, flow and HiFT of the user's CosyVoice install) ----------------------------
    #: an already-built upstream ``CosyVoice2`` (frontend + flow + HiFT) for the codec hooks to use instead of
    #: loading one from the checkpoint
    codec_model = None
    #: an already-built S3 speech tokenizer (``s3tokenizer.S3TokenizerV2``) that ``encode_audio`` uses instead of
    #: upstream's frontend: tokens only, no flow prompt (a random-init one in the tests, or one the caller loaded)
    speech_tokenizer = None

    def cosyvoice(self):
        if self.codec_model is not None:
            return self.codec_model
        mod = require("cosyvoice.cli.cosyvoice", "cosyvoice", "CosyVoice 2 (speech tokenizer, flow, HiFT)",
                      purpose="encode and decode speech tokens (clone github.com/FunAudioLLM/CosyVoice and put "
                              "it on PYTHONPATH; for speech tokens alone, pip install s3tokenizer reads the "
                              f"checkpoint's {S3_ONNX})")
        root = os.environ.get("SPADE_COSYVOICE_ROOT", str(self.path))
        return cached(("cosyvoice2", root), lambda: mod.CosyVoice2(root))

    def _onnx_speech_tokenizer(self):
        """s3tokenizer's S3TokenizerV2 loaded from the checkpoint's speech_tokenizer_v2.onnx (the file upstream's
        frontend runs); None when the package or the file is missing."""
        import importlib.util

        onnx = Path(os.environ.get("SPADE_COSYVOICE_ROOT", str(self.path))) / S3_ONNX
        if not onnx.is_file() or importlib.util.find_spec("s3tokenizer") is None:
            return None
        def build():
            import s3tokenizer

            tokenizer = s3tokenizer.S3TokenizerV2("speech_tokenizer_v2_25hz")
            tokenizer.init_from_onnx(str(onnx))
            return tokenizer.eval()

        return cached(("cosyvoice2-s3", str(onnx)), build)

    def encode_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Speech tokens of ``audio`` (25 a second). Upstream's frontend (``codec_model`` or the ``cosyvoice``
        package) also remembers its flow prompt (tokens, mel, speaker embedding), which decoding needs; without it,
        the S3 tokenizer (``speech_tokenizer``, or s3tokenizer with the checkpoint's speech_tokenizer_v2.onnx)
        gives the same tokens, enough for training data."""
        tokenizer = self.speech_tokenizer
        if tokenizer is None:
            try:
                cv = self.cosyvoice()
            except ImportError:
                tokenizer = self._onnx_speech_tokenizer()
                if tokenizer is None:
                    raise
            else:
                return self._frontend_tokens(cv, audio, sample_rate)
        return s3_speech_tokens(tokenizer, audio, sample_rate)

    def _frontend_tokens(self, cv, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        import inspect
        import tempfile

        from spade_tts.audio import resample, save_wav, to_mono

        fz = cv.frontend.frontend_zero_shot
        if "prompt_wav" in inspect.signature(fz).parameters:  # current upstream reads the prompt from a file
            with tempfile.TemporaryDirectory() as tmp:
                file = Path(tmp) / "prompt.wav"
                save_wav(str(file), to_mono(audio), sample_rate)
                inputs = fz("", "", str(file), cv.sample_rate, "")
        else:  # earlier releases take the 16 kHz waveform
            wav = torch.from_numpy(resample(to_mono(audio), sample_rate, 16000)).float()[None]
            inputs = fz("", "", wav, cv.sample_rate, "")
        self.flow_prompt = {k: inputs[k] for k in ("flow_prompt_speech_token", "prompt_speech_feat", "flow_embedding")}
        return inputs["llm_prompt_speech_token"].reshape(-1).cpu().numpy().astype(np.int64)

    def decode_audio(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        """Speech tokens -> 24 kHz audio through upstream's flow and HiFT (``token2wav``), conditioned on the flow
        prompt that ``encode_audio`` of the voice prompt remembered."""
        cv = self.cosyvoice()
        prompt = getattr(self, "flow_prompt", None)
        if prompt is None:
            raise ValueError("CosyVoice 2 decoding needs the voice prompt's mel and speaker embedding: give "
                             "--prompt-audio (not --prompt-codes)")
        token = torch.as_tensor(np.asarray(codes, dtype=np.int64)).reshape(1, -1)
        key = str(uuid.uuid4())
        cv.model.hift_cache_dict[key] = None  # upstream's tts() registers the stream before token2wav reads it
        try:
            with torch.no_grad():
                wav = cv.model.token2wav(token=token, prompt_token=prompt["flow_prompt_speech_token"],
                                         prompt_feat=prompt["prompt_speech_feat"], embedding=prompt["flow_embedding"],
                                         token_offset=0, uuid=key, finalize=True)
        finally:
            cv.model.hift_cache_dict.pop(key, None)
        return wav.reshape(-1).float().cpu().numpy(), int(cv.sample_rate)


def s3_speech_tokens(tokenizer, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """CosyVoice 2's speech tokens through an S3 tokenizer, as upstream's frontend makes them: 16 kHz audio ->
    Whisper-style 128-bin log-mel (s3tokenizer's, the one upstream uses) -> ``quantize`` -> tokens in [0, 6561)."""
    s3tokenizer = require("s3tokenizer", "s3tokenizer", "CosyVoice 2 (S3 speech tokenizer)",
                          purpose="compute the mel spectrogram the speech tokenizer reads")
    from spade_tts.audio import resample, to_mono

    wav = torch.from_numpy(resample(to_mono(audio), sample_rate, 16000)).float()
    mel = s3tokenizer.log_mel_spectrogram(wav, n_mels=128)
    dev = next(tokenizer.parameters()).device
    with torch.no_grad():
        codes, lens = tokenizer.quantize(mel[None].to(dev), torch.tensor([mel.shape[1]], device=dev))
    return codes[0, : int(lens[0])].cpu().numpy().astype(np.int64)
