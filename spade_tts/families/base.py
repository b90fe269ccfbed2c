"""What every LLM-TTS family adapter gives the rest of spade-tts.

Every stage (teacher-forced importance, WLI, pruning, distillation, decoding) works on one
shape of model: a decoder-only LM over a single token space, called as
``lm(input_ids=..., attention_mask=...).logits``, whose decoder stack
:func:`spade_tts.pruning.layers.find_decoder` finds. LLaSA, Spark-TTS, Orpheus and OuteTTS are
that already (an HF ``*ForCausalLM`` with speech tokens appended to the text vocabulary).
CosyVoice 2 is not (text and speech have separate embedding tables and its own speech head),
so its adapter presents a *unified* view: speech token k is id ``text_vocab + k`` on the way
in, and logits over the unified space on the way out.

An adapter is the only place that knows a family's prompt template, where its speech tokens
sit, what stops a generation, how tokens map to codec codes (Orpheus: 7 per SNAC frame;
OuteTTS: two DAC codebooks interleaved) and how its codec decodes them. Everything else asks
the adapter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class SpeechLayout:
    """Where speech lives in the unified token space."""

    speech_start: int  # first speech-token id
    speech_end: int  # one past the last speech-token id
    stop_ids: tuple[int, ...]  # ids that end a generation (e.g. LLaSA's SPEECH_GENERATION_END)
    extra_ids: tuple[int, ...] = ()  # other ids the model may emit while speaking (e.g. frame markers)

    def head_rows(self) -> torch.Tensor:
        """Rows of the output head a speech generation may pick (speech + stop + extra ids), sorted."""
        rows = set(range(self.speech_start, self.speech_end)) | set(self.stop_ids) | set(self.extra_ids)
        return torch.tensor(sorted(rows), dtype=torch.long)


@dataclass(frozen=True)
class Word:
    """One spoken word of an utterance and where it lies in the audio (seconds from the start)."""

    word: str
    start: float
    end: float
    features: dict | None = None  # per-word acoustic features, when a family computes them (OuteTTS 1.0)


@dataclass
class Utterance:
    """One (text, speech) example in a family's own terms: ``codes`` as its codec gives them.

    ``words`` (per-word timings), ``phones`` (per-phone end times) and ``features`` (utterance-level
    acoustic features) are optional; families whose sequences interleave words and speech (OuteTTS
    1.0) need the word timings, the built-in model's training layout the phone timings.
    """

    text: str
    codes: np.ndarray  # the codec's codes, shape as the family's codec uses them
    speaker: str = ""
    words: list[Word] | None = None
    features: dict | None = None
    phones: list[tuple[str, float]] | None = None  # (phone, end time in s): phone-forced families (builtin)


DECODERS = ("static", "static-int8", "static-compiled", "static-int8-compiled", "hf")
EXACT_DECODERS = ("static", "hf")  # the model's own float layers, uncompiled, on any device; the others are CPU paths


def decoder_options(name: str) -> dict:
    """StaticDecoder's switches for a decoder name: int8 weight copies, and a step compiled for any cache length
    (one compile per process and model shape, reused by every later decoder; ``docs/decoding.md``)."""
    return {"int8_weights": "int8" in name, "compile_any_length": name.endswith("-compiled")}


@dataclass
class GenerationConfig:
    """How every family generates: sampling, length guards and the decode engine, in one place.

    Families differ only in the defaults (``SpeechLM.generation_defaults``: what their upstream
    recommends) and in their generation rule (``SpeechLM.sampler``); the fields below mean the same
    for all of them. Fields a rule does not use are ignored by it (the built-in model's phone
    forcing has no top-k; the token rule has no phone guard).
    """

    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 1500
    seed: int = 0
    greedy: bool = False
    extra: dict = field(default_factory=dict)
    min_new_tokens: int = 0  # stop ids are suppressed before this many new tokens (smoke tests, short prompts)
    # further sampling filters, off by default (families whose upstream recommends them set them in
    # SpeechLM.generation_defaults): HF's order, repetition penalty -> temperature -> top-k -> top-p -> min-p
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    min_p: float = 0.0  # drop tokens less likely than min_p x the most likely one (0 = off)
    repetition_penalty: float = 1.0  # divide positive logits (multiply negative ones) of recent tokens (1 = off)
    repetition_window: int = 0  # "recent": the last N tokens of prompt + generation (0 = all of them)
    # repetition-aware sampling (CosyVoice 2's ras_sampling): when the token drawn from the nucleus already came
    # ras_window * ras_tau times or more among the last ras_window generated tokens, draw again from the whole
    # distribution, which breaks the loops a narrow nucleus falls into (0 = off)
    ras_window: int = 0
    ras_tau: float = 0.1
    # the decode engine: "static" = spade_tts.decoding.StaticDecoder (preallocated KV cache, head trimmed to the
    # rows speech may use) where the LM is a plain HF Llama/Qwen2/Qwen3/Mistral, the LM's own forward otherwise;
    # "static-int8": the same with int8 weight copies in the decode step (CPU only, slightly lossy, faster at
    # small batches; spade_tts/decoding/int8_weights.py); "static-compiled" / "static-int8-compiled" (CPU only):
    # the step compiled by inductor for any cache length, once per process (~1 min; worth it for many items);
    # "hf": always the LM's own forward
    decoder: str = "static"
    drop_finished: bool = True  # rows whose item ended leave the batch, where the rule's rows are independent
    # speculative decoding (spade_tts/families/speculative.py; lossless: the output follows the model's own
    # distribution): "student=PATH" (a checkpoint with the same speech tokens), "skip=N" (the model without its
    # N least important layers by WLI in draft_scores, default <model>/scores.json) or "skip-layers=I,J,..."
    # ('' = off); the draft proposes draft_tokens tokens, the model checks them in one forward
    draft: str = ""
    draft_tokens: int = 4
    draft_scores: str = ""
    # "exact" (lossless) or "groups=N": accept a draft token when its group of alike speech tokens passes the test
    # (the group sequence is the model's, the token within a group the draft's; reported apart)
    draft_accept: str = "exact"
    # phone-forced generation (the builtin family): a phone lasting longer than this is ended by force; an
    # item is cut at max_seconds, and (> 0) at max_length_ratio x the length its prompt's speaking rate predicts
    max_phone_seconds: float = 0.6
    max_seconds: float = 20.0
    max_length_ratio: float = 0.0
    any_move_on: bool = True  # time phones by the probability of any phone/end token (families/builtin.py)
    # soft decoding (rules that keep it: the builtin family's): the codec decodes, for each speech token, the mean
    # value (``MelTokenizer.code_values``) of the nucleus it was drawn from, the codes the LM hesitated between,
    # instead of the one it drew (which the LM still reads next); False = the drawn codes
    soft_codes: bool = False


def check_decoder(name: str, device) -> None:
    """One-line errors for a decoder name that does not exist or cannot run on ``device``."""
    if name not in DECODERS:
        cpu_only = ", ".join(n for n in DECODERS if n not in EXACT_DECODERS)
        raise ValueError(f"decoder={name!r}: use one of {', '.join(DECODERS)} (static is the default; {cpu_only} "
                         "on a CPU only)")
    if name not in EXACT_DECODERS and torch.device(device).type != "cpu":
        raise ValueError(f"decoder={name} is a CPU path and the model is on {device}; use decoder=static there "
                         "(on a GPU it replays CUDA graphs)")


@dataclass
class GenerationRequest:
    """One item to generate: the ids generation starts from, plus whatever the family's rule needs
    (the built-in model's target phones, for instance, live in a subclass)."""

    prompt: list[int]


class SpeechLM:
    """A loaded checkpoint of one family: the LM, its tokenizer and the family's rules.

    Subclasses set ``family`` and implement the methods that raise ``NotImplementedError``.
    """

    family: ClassVar[str] = ""
    #: training sequences carry another utterance of the same speaker as the voice prompt (zero-shot
    #: cloning families); False for families that speak named voices (Orpheus' finetuned models)
    uses_prompt: ClassVar[bool] = True
    #: the family makes its own distillation data (:meth:`distill_data`, :meth:`tokenize_corpus`); the others
    #: distill on a manifest of the user's data
    ships_training_data: ClassVar[bool] = False

    def __init__(self, path: Path, lm: nn.Module, tokenizer, layout: SpeechLayout):
        self.path, self.lm, self.tokenizer, self.layout = Path(path), lm, tokenizer, layout

    # -- loading and saving, in the family's own on-disk format ------------------------------
    @classmethod
    def detect(cls, path: Path) -> bool:
        """True when ``path`` looks like a checkpoint of this family (config, tokenizer, files)."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | str = "auto", device: str = "cpu") -> "SpeechLM":
        raise NotImplementedError

    def save_pretrained(self, out: str | Path) -> None:
        """Write a folder that ``from_pretrained`` (ours, and the family's own tools) loads."""
        raise NotImplementedError

    # -- sequences ---------------------------------------------------------------------------
    def prompt_ids(self, text: str, prompt_text: str = "", prompt_codes: np.ndarray | None = None) -> list[int]:
        """The ids generation starts from, built as upstream builds them (the speech part continues it)."""
        raise NotImplementedError

    def codes_to_ids(self, codes: np.ndarray) -> list[int]:
        """Codec codes -> speech-token ids in the unified space."""
        raise NotImplementedError

    def ids_to_codes(self, ids: list[int]) -> np.ndarray:
        """Generated speech-token ids (stop and extra ids dropped) -> codec codes.

        The default is a single code stream laid out contiguously from ``speech_start``;
        families with several streams (Orpheus, OuteTTS, Spark-TTS) override it.
        """
        return np.asarray(self.speech_ids(list(ids)), dtype=np.int64) - self.layout.speech_start

    def training_sequence(self, target: Utterance, prompt: Utterance | None = None) -> tuple[list[int], int]:
        """(input_ids, loss_from): one training sequence; labels start after position ``loss_from``.

        The default is what a decoder-only TTS is trained on: the synthesis prompt (which holds the
        prompt's speech), then the target's speech tokens and the first stop id; the loss starts
        right after the prompt, as generation does.
        """
        head = self.prompt_ids(target.text, prompt.text if prompt else "", prompt.codes if prompt else None)
        return head + self.codes_to_ids(target.codes) + [self.layout.stop_ids[0]], len(head) - 1

    # -- codec hooks (need the family's codec package and weights) --------------------------------
    def encode_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        raise NotImplementedError

    def decode_audio(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def decode_generation(self, gen) -> tuple[np.ndarray, np.ndarray, int]:
        """(codes, audio, sample rate) of a :class:`~spade_tts.families.generate.Generation`: its speech ids'
        codes, decoded. A family whose rule keeps more than the drawn codes (``Generation.code_values``) decodes
        that instead."""
        codes = self.ids_to_codes(self.speech_ids(gen.ids))
        return (codes, *self.decode_audio(codes))

    # -- defaults every family may keep (added for the framework; override where they do not fit) --------
    @property
    def vocab_size(self) -> int:
        """Size of the unified token space the LM's logits cover."""
        return int(self.lm.config.vocab_size)

    @property
    def pad_id(self) -> int:
        """Id used to right-pad training batches (masked out, so any valid id works)."""
        tok = self.tokenizer
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(tok, name, None) if tok is not None else None
            if isinstance(value, int):
                return value
        return int(self.layout.stop_ids[0]) if self.layout.stop_ids else 0

    def prepare_utterance(self, utt: Utterance, audio: np.ndarray | None = None, sample_rate: int = 0) -> Utterance:
        """Family-specific preparation of a manifest utterance (``audio``: the row's audio when it has one).

        The default keeps it as it is. OuteTTS 1.0 computes its acoustic features here and insists on word
        timings. A ``ValueError`` names what the row lacks (the data hook prefixes the manifest line).
        """
        return utt

    #: True when ``prepare_utterance`` uses a row's audio even where the row also gives codes
    wants_audio: ClassVar[bool] = False

    def generation_defaults(self, **overrides) -> GenerationConfig:
        """The sampling the family's upstream recommends (used when ``generate_ids`` gets no config)."""
        return GenerationConfig(**overrides)

    def generation_config(self, **settings) -> GenerationConfig:
        """The family's defaults with the stage's settings; a setting given as None keeps the family's default
        (so `spade eval temperature=...` overrides, and leaving it out samples as the family's upstream does)."""
        return self.generation_defaults(**{k: v for k, v in settings.items() if v is not None})

    def generation_request(self, text: str, prompt_text: str = "",
                           prompt_codes: np.ndarray | None = None) -> GenerationRequest:
        """What generating ``text`` in the prompt's voice starts from (the default: just :meth:`prompt_ids`)."""
        return GenerationRequest(self.prompt_ids(text, prompt_text, prompt_codes))

    def sampler(self, requests: list[GenerationRequest], cfg: GenerationConfig, item_ids: list[int]):
        """The family's generation rule for one batch (``spade_tts.families.generate.Sampler``).

        The default samples the next token among ``layout.head_rows()`` under :meth:`token_mask`,
        until a stop id. ``item_ids`` number the items (rules with a random stream per item use them).
        """
        from spade_tts.families.generate import TokenSampler

        return TokenSampler(self, [r.prompt for r in requests], cfg)

    def distill_data(self, cfg, split: str = "train") -> Path:
        """A distillation dataset folder made of the family's own training data (``split``: train or heldout),
        for families that ship theirs (the built-in model); the others distill on a manifest's sequences."""
        raise ValueError(f"the {self.family} family ships no training data: give dataset=FOLDER, made from your "
                         "manifest with `spade data family` (docs/families/README.md)")

    def tokenize_corpus(self, corpus_dir: str | Path, out_dir: str | Path) -> None:
        """Encode a corpus of `spade data build` into the token files :meth:`distill_data` reads (families that
        train on such a corpus: the built-in model; `spade compress --quick` builds one)."""
        raise ValueError(f"the {self.family} family does not train on a `spade data build` corpus: give --data "
                         "MANIFEST instead")

    def codec_params(self) -> int:
        """Parameters of the codec (``spade eval``'s system size): counted on the module the family's ``codec()``
        loads (after a synthesis it is loaded already); 0 where the codec is no torch module or cannot load."""
        loader = getattr(self, "codec", None)
        if not callable(loader):
            return 0
        try:
            codec = loader()
        except (ImportError, OSError, ValueError):
            return 0
        return sum(p.numel() for p in codec.parameters()) if isinstance(codec, nn.Module) else 0

    def token_mask(self, step: int, rows: torch.Tensor, prompts: list[list[int]],
                   generated: list[list[int]]) -> torch.Tensor | None:
        """Which of ``rows`` may come next, seeing each sequence so far: ``(len(rows),)`` for the whole
        batch, ``(batch, len(rows))`` per sequence, or None for all. The default is :meth:`step_mask`;
        families whose grammar depends on what was written (OuteTTS 1.0's word blocks) override it.
        """
        return self.step_mask(step, rows)

    def step_mask(self, step: int, rows: torch.Tensor) -> torch.Tensor | None:
        """Which of ``rows`` (``layout.head_rows()``) may come at new-token ``step`` (0 = first); None = all.

        Families whose codes have a per-position structure (Orpheus: the k-th token of a SNAC frame
        lives in the k-th block of 4,096 ids) constrain generation with it, so that whatever a pruned
        model samples always maps to valid codes.
        """
        return None

    def random_codes(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        """Valid random codes of ``frames`` frames, in the codec's own shape (tests and smoke runs).

        The default suits a single code stream: uniform speech ids mapped back by ``ids_to_codes``.
        """
        ids = rng.integers(self.layout.speech_start, self.layout.speech_end, size=frames).tolist()
        return self.ids_to_codes(ids)

    def speech_ids(self, ids: list[int]) -> list[int]:
        """``ids`` cut at the first stop id, stop and extra ids dropped: the part ``ids_to_codes`` reads."""
        stops, out = set(self.layout.stop_ids), []
        for i in ids:
            if i in stops:
                break
            if self.layout.speech_start <= i < self.layout.speech_end:
                out.append(int(i))
        return out
