"""Any decoder-only TTS LM whose speech tokens sit in its vocabulary, configured by a YAML file.

For a model spade has no adapter for, ``spade_family.yaml`` next to the checkpoint (or
``--family-config FILE``) says what an adapter would::

    speech_tokens:                 # either an id range ...
      start: 151672                #   first speech-token id
      count: 65536                 #   number of codes; code k is id start + k
    # speech_token_pattern: "<|speech_{n}|>"   # ... or token names; must be contiguous ids
    prompt_template: "<|im_start|>user\\n{prompt_text} {text}<|im_end|>\\n<|im_start|>assistant\\n{prompt_speech}"
    add_bos: false                 # prepend the tokenizer's BOS id
    stop_tokens: ["<|im_end|>"]    # names or ids; the first also ends training sequences
    extra_tokens: []               # other ids the model may emit while speaking
    decode: "mycodec.api:decode"   # codes (np.ndarray) -> (audio, sample_rate); optional
    encode: "mycodec.api:encode"   # (audio, sample_rate) -> codes; optional (else give codes in the manifest)

``{prompt_speech}`` marks where the prompt's speech tokens go and where generation continues;
the text around it is tokenized without the tokenizer's own specials (spell them in the template).
Codes are a 1-D stream: id = start + code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spade_tts.families.base import SpeechLayout
from spade_tts.families.codec_hooks import load_callable
from spade_tts.families.hf import HFSpeechLM

CONFIG_FILE = "spade_family.yaml"
PLACEHOLDERS = ("{text}", "{prompt_text}", "{prompt_speech}")


@dataclass
class GenericFamilyConfig:
    prompt_template: str = ""
    speech_start: int | None = None
    speech_count: int | None = None
    speech_token_pattern: str = ""
    add_bos: bool = False
    stop_tokens: list = field(default_factory=list)
    extra_tokens: list = field(default_factory=list)
    decode: str = ""
    encode: str = ""

    @classmethod
    def load(cls, path: str | Path) -> "GenericFamilyConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"family config {path} not found (the generic family needs a {CONFIG_FILE})")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must be a YAML mapping")
        known = {"family", "speech_tokens", "speech_token_pattern", "prompt_template", "add_bos", "stop_tokens",
                 "extra_tokens", "decode", "encode"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key {unknown[0]!r}; keys: {', '.join(sorted(known))}")
        st = raw.get("speech_tokens") or {}
        if not isinstance(st, dict):
            raise ValueError(f"{path}: speech_tokens must be a mapping with start and count")
        cfg = cls(prompt_template=str(raw.get("prompt_template") or ""),
                  speech_start=st.get("start"), speech_count=st.get("count"),
                  speech_token_pattern=str(raw.get("speech_token_pattern") or ""),
                  add_bos=bool(raw.get("add_bos", False)), stop_tokens=list(raw.get("stop_tokens") or []),
                  extra_tokens=list(raw.get("extra_tokens") or []), decode=str(raw.get("decode") or ""),
                  encode=str(raw.get("encode") or ""))
        if (cfg.speech_start is None) == (not cfg.speech_token_pattern):
            raise ValueError(f"{path}: give speech_tokens (start, count) or speech_token_pattern, exactly one")
        if cfg.speech_start is not None and (not isinstance(cfg.speech_start, int) or not isinstance(cfg.speech_count, int)
                                             or cfg.speech_count < 1):
            raise ValueError(f"{path}: speech_tokens needs integer start and count >= 1")
        if cfg.speech_token_pattern and "{n}" not in cfg.speech_token_pattern:
            raise ValueError(f"{path}: speech_token_pattern must contain {{n}} (the code), e.g. '<|s_{{n}}|>'")
        if "{prompt_speech}" not in cfg.prompt_template or "{text}" not in cfg.prompt_template:
            raise ValueError(f"{path}: prompt_template must contain {{text}} and {{prompt_speech}} (where speech goes)")
        if not cfg.stop_tokens:
            raise ValueError(f"{path}: stop_tokens is empty; name the token(s) that end the speech")
        return cfg


class GenericSpeechLM(HFSpeechLM):
    family = "generic"
    side_file_names = (CONFIG_FILE,)

    def __init__(self, path, lm, tokenizer, layout, config: GenericFamilyConfig):
        super().__init__(path, lm, tokenizer, layout)
        self.config = config

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (Path(path) / CONFIG_FILE).is_file()

    @classmethod
    def from_pretrained(cls, path, dtype="auto", device: str = "cpu", config_file=None) -> "GenericSpeechLM":
        from transformers import AutoModelForCausalLM

        from spade_tts.families.hf import load_tokenizer, resolve_dtype

        path = cls.check_folder(path)
        config = GenericFamilyConfig.load(config_file or path / CONFIG_FILE)
        tokenizer = load_tokenizer(path)
        layout = cls.layout_from(config, tokenizer)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype)).to(device).eval()
        vocab = int(lm.config.vocab_size)
        top = max([layout.speech_end - 1, *layout.stop_ids, *layout.extra_ids])
        if top >= vocab:
            raise ValueError(f"{path}: the family config uses token id {top} but the model's vocabulary has {vocab}")
        obj = cls(path, lm, tokenizer, layout, config)
        if config_file:
            obj._config_file = Path(config_file)
        return obj

    def save_pretrained(self, out) -> None:
        super().save_pretrained(out)
        src = getattr(self, "_config_file", None)
        if src is not None and not (Path(out) / CONFIG_FILE).exists():
            (Path(out) / CONFIG_FILE).write_text(Path(src).read_text())

    @staticmethod
    def token_id(tokenizer, token) -> int:
        if isinstance(token, int) and not isinstance(token, bool):
            return token
        tid = tokenizer.convert_tokens_to_ids(str(token))
        if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id
                           and str(token) != tokenizer.unk_token):
            raise ValueError(f"token {token!r} of the family config is not in the tokenizer")
        return int(tid)

    @classmethod
    def layout_from(cls, config: GenericFamilyConfig, tokenizer) -> SpeechLayout:
        if config.speech_start is not None:
            start, count = config.speech_start, config.speech_count
        else:
            start = cls.token_id(tokenizer, config.speech_token_pattern.format(n=0))
            vocab = tokenizer.get_vocab()
            count = 0
            while config.speech_token_pattern.format(n=count) in vocab:
                if vocab[config.speech_token_pattern.format(n=count)] != start + count:
                    raise ValueError(f"speech tokens {config.speech_token_pattern!r} are not contiguous ids "
                                     f"(code {count} is id {vocab[config.speech_token_pattern.format(n=count)]}, "
                                     f"expected {start + count}); give speech_tokens start/count instead")
                count += 1
        return SpeechLayout(start, start + count, tuple(cls.token_id(tokenizer, t) for t in config.stop_tokens),
                            tuple(cls.token_id(tokenizer, t) for t in config.extra_tokens))

    # -- sequences ----------------------------------------------------------------------------------------
    def _text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def prompt_ids(self, text: str, prompt_text: str = "", prompt_codes: np.ndarray | None = None) -> list[int]:
        before, _, after = self.config.prompt_template.partition("{prompt_speech}")
        fill = {"text": text, "prompt_text": prompt_text}
        ids = [int(self.tokenizer.bos_token_id)] if self.config.add_bos and self.tokenizer.bos_token_id is not None else []
        ids += self._text_ids(before.format(**fill))
        if prompt_codes is not None and len(prompt_codes):
            ids += self.codes_to_ids(prompt_codes)
        return ids + self._text_ids(after.format(**fill))

    def codes_to_ids(self, codes: np.ndarray) -> list[int]:
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        n = self.layout.speech_end - self.layout.speech_start
        if codes.size and (codes.min() < 0 or codes.max() >= n):
            raise ValueError(f"codes must be in [0, {n}), got {codes.min()}..{codes.max()}")
        return (codes + self.layout.speech_start).tolist()



    # -- codec hooks ----------------------------------------------------------------------------------------
    def encode_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        if not self.config.encode:
            raise ValueError(f"{CONFIG_FILE} has no encode: hook; give precomputed codes in the manifest")
        return np.asarray(load_callable(self.config.encode)(audio, sample_rate))

    def decode_audio(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        if not self.config.decode:
            raise ValueError(f"{CONFIG_FILE} has no decode: hook ('module:function'), so codes cannot become audio")
        result = load_callable(self.config.decode)(np.asarray(codes))
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ValueError(f"decode hook {self.config.decode} must return (audio, sample_rate), got "
                             f"{type(result).__name__}")
        audio, sr = result
        return np.asarray(audio, dtype=np.float32).reshape(-1), int(sr)
