"""LLaSA 1B / 3B / 8B (HKUSTAudio): a Llama-3 LM whose vocabulary ends with 65,536 X-codec2 tokens.

Layout (vocabulary 193,800): the Llama-3 text vocabulary (128,256 ids, its own specials
``<|begin_of_text|>`` 128000, ``<|start_header_id|>`` 128006, ``<|end_header_id|>`` 128007,
``<|eot_id|>`` 128009), then 8 LLaSA specials (``<|TEXT_GENERATION_START|>`` ...
``<|SPEECH_UNDERSTANDING_END|>``, 128256-128263), then ``<|s_0|>`` ... ``<|s_65535|>``
(128264-193799): speech token k is id 128264 + k. The ids are read from the checkpoint's own
tokenizer, never assumed, and checked to be contiguous.

The prompt is the model's chat template, as upstream builds it: the user turn is
"Convert the text to speech:" + ``<|TEXT_UNDERSTANDING_START|>`` + prompt text + target text +
``<|TEXT_UNDERSTANDING_END|>``, the assistant turn ``<|SPEECH_GENERATION_START|>`` + the prompt's
speech tokens, left open (``continue_final_message``) for the model to continue;
``<|SPEECH_GENERATION_END|>`` ends the speech. Codes are X-codec2's single stream at 50 tokens/s,
16 kHz, through the ``xcodec2`` package (``XCodec2Model``), loaded from ``SPADE_XCODEC2`` (a local
folder or hub id; default ``HKUSTAudio/xcodec2``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spade_tts.families.base import SpeechLayout
from spade_tts.families.codec_hooks import cached, codec_weights, load_codec, require
from spade_tts.families.hf import HFSpeechLM, read_config, tokenizer_vocab

NUM_CODES = 65536
SAMPLE_RATE = 16000
TOKENS_PER_SECOND = 50
SAMPLES_PER_TOKEN = SAMPLE_RATE // TOKENS_PER_SECOND
XCODEC2_REPO = "HKUSTAudio/xcodec2"
USER_INSTRUCTION = "Convert the text to speech:"
TU_START, TU_END = "<|TEXT_UNDERSTANDING_START|>", "<|TEXT_UNDERSTANDING_END|>"
SG_START, SG_END = "<|SPEECH_GENERATION_START|>", "<|SPEECH_GENERATION_END|>"
SPECIALS = ("<|TEXT_GENERATION_START|>", "<|TEXT_GENERATION_END|>", TU_START, TU_END, SG_START, SG_END,
            "<|SPEECH_UNDERSTANDING_START|>", "<|SPEECH_UNDERSTANDING_END|>")
# Llama-3 chat format, used only when a checkpoint's tokenizer carries no chat template of its own.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def speech_token(k: int) -> str:
    return f"<|s_{k}|>"


class LlasaSpeechLM(HFSpeechLM):
    family = "llasa"

    @classmethod
    def detect(cls, path: Path) -> bool:
        cfg = read_config(path)
        if cfg.get("model_type") != "llama":
            return False
        vocab = tokenizer_vocab(path)
        return speech_token(0) in vocab and SG_START in vocab and SG_END in vocab

    @classmethod
    def make_layout(cls, tokenizer, config) -> SpeechLayout:
        ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (speech_token(0), speech_token(NUM_CODES - 1),
                                                                       SG_START, SG_END, TU_START, TU_END)}
        unk = getattr(tokenizer, "unk_token_id", None)
        missing = [n for n, i in ids.items() if i is None or (unk is not None and i == unk)]
        if missing:
            raise ValueError(f"this tokenizer has no {missing[0]}: not a LLaSA tokenizer (pass the right --family)")
        start = ids[speech_token(0)]
        if ids[speech_token(NUM_CODES - 1)] != start + NUM_CODES - 1:
            raise ValueError(f"LLaSA speech tokens must be {NUM_CODES} contiguous ids from {speech_token(0)} ({start})")
        return SpeechLayout(start, start + NUM_CODES, (ids[SG_END],))

    # -- sequences ----------------------------------------------------------------------------------------
    def _id(self, token: str) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(token))

    def chat_prefix(self, text: str, prompt_text: str = "") -> list[int]:
        """Token ids of the chat up to and including ``<|SPEECH_GENERATION_START|>`` (the template's own)."""
        joined = " ".join(t for t in (prompt_text.strip(), text.strip()) if t)
        chat = [{"role": "user", "content": USER_INSTRUCTION + TU_START + joined + TU_END},
                {"role": "assistant", "content": SG_START}]
        template = None if getattr(self.tokenizer, "chat_template", None) else LLAMA3_TEMPLATE
        rendered = self.tokenizer.apply_chat_template(chat, tokenize=False, continue_final_message=True,
                                                      chat_template=template)
        ids = list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        if not ids or ids[-1] != self._id(SG_START):
            raise ValueError("the chat template did not end the prompt with <|SPEECH_GENERATION_START|>; "
                             "is this a LLaSA tokenizer?")
        return ids

    def prompt_ids(self, text: str, prompt_text: str = "", prompt_codes: np.ndarray | None = None) -> list[int]:
        ids = self.chat_prefix(text, prompt_text)
        if prompt_codes is not None and len(prompt_codes):
            ids += self.codes_to_ids(prompt_codes)
        return ids

    def codes_to_ids(self, codes: np.ndarray) -> list[int]:
        codes = np.asarray(codes).reshape(-1).astype(np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= NUM_CODES):
            raise ValueError(f"X-codec2 codes must be in [0, {NUM_CODES}), got {codes.min()}..{codes.max()}")
        return (codes + self.layout.speech_start).tolist()



    # -- codec ----------------------------------------------------------------------------------------------
    #: an already-built X-codec2 for the codec hooks to use instead of loading weights: the ``xcodec2`` package's
    #: ``XCodec2Model`` or transformers' ``Xcodec2Model`` (random-init ones in the tests, or one the caller loaded)
    codec_model = None

    def codec(self):
        """``codec_model``, else X-codec2 loaded once from SPADE_XCODEC2 (a local folder) or HKUSTAudio/xcodec2: a
        folder in transformers' format (config model_type "xcodec2", as HKUSTAudio/xcodec2-hf) loads with
        transformers' Xcodec2Model, any other with the ``xcodec2`` package, whose constructor also loads
        facebook/w2v-bert-2.0 (its semantic encoder) from the HF cache."""
        if self.codec_model is not None:
            return self.codec_model
        what = "an X-codec2 folder (HKUSTAudio/xcodec2, or xcodec2-hf for transformers)"
        source = codec_weights("SPADE_XCODEC2", XCODEC2_REPO, "LLaSA", what)

        def build():
            if read_config(Path(source)).get("model_type") == "xcodec2":
                transformers = require("transformers", "transformers", "LLaSA (X-codec2, transformers format)")
                if not hasattr(transformers, "Xcodec2Model"):
                    raise ImportError(f"{source} is an X-codec2 folder in transformers' format, and this transformers "
                                      f"({transformers.__version__}) has no Xcodec2Model: pip install -U transformers")
                load = transformers.Xcodec2Model.from_pretrained
            else:
                load = require("xcodec2.modeling_xcodec2", "xcodec2", "LLaSA (X-codec2)").XCodec2Model.from_pretrained
            return load_codec(lambda s: load(s).eval(), source, "SPADE_XCODEC2", "LLaSA (X-codec2)", what)

        return cached(("llasa", source), build)

    def encode_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """16 kHz mono -> X-codec2's codes, one per 320 samples: both implementations pad the clip to the next whole
        code, adding one when it is already whole (N // 320 + 1 codes)."""
        from spade_tts.audio import to_mono_16k

        wav = to_mono_16k(np.asarray(audio, dtype=np.float32), sample_rate)
        codec = self.codec()
        dev = next(codec.parameters()).device
        with torch.no_grad():
            if hasattr(codec, "encode_code"):  # the xcodec2 package, as LLaSA's README runs it
                codes = codec.encode_code(input_waveform=torch.from_numpy(wav)[None].to(dev))
            else:  # transformers' Xcodec2Model, with its feature extractor (mel for the semantic encoder, padding)
                from transformers import Xcodec2FeatureExtractor

                features = Xcodec2FeatureExtractor(sampling_rate=SAMPLE_RATE, hop_length=int(codec.config.hop_length))
                inputs = features(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt")
                codes = codec.encode(**{k: v.to(dev) for k, v in inputs.items()}).audio_codes
        return codes.reshape(-1).cpu().numpy().astype(np.int64)

    def decode_audio(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        """Codes -> 16 kHz audio, 320 samples a code (both implementations take them as ``(1, 1, T)``)."""
        codec = self.codec()
        t = torch.as_tensor(np.asarray(codes, dtype=np.int64)).reshape(1, 1, -1).to(next(codec.parameters()).device)
        with torch.no_grad():
            wav = codec.decode_code(t) if hasattr(codec, "decode_code") else codec.decode(audio_codes=t).audio_values
        return wav.reshape(-1).float().cpu().numpy(), SAMPLE_RATE
