"""The built-in model as a family: a small LLaSA-shaped Llama that reads phones, with its own codec.

Its token space (``spade_tts.reference.vocab``) is LLaSA's layout with the CMU phones as the
"text vocabulary"; its codec is the log-mel k-means tokenizer with Griffin-Lim
(``spade_tts.codec``). What sets it apart is its **generation rule**, phone forcing: at every step
the model may emit a speech token or move on to the next phone of the target (the only phone it
is allowed), or, after the last phone, end the speech. Nothing else is sampled, so the text is
always read in order. Two guards stop a runaway decoder: a phone that lasts longer than
``max_phone_seconds`` is ended by force, and the whole item is cut at ``max_seconds`` (or at
``max_length_ratio`` times the length its prompt's speaking rate predicts); both are counted and
reported rather than failing silently.

Every item samples from its own random stream, seeded by (seed, item), so what it says does not
depend on which other items share its batch or on rows leaving the batch as they finish.

With ``soft_codes`` (the shipped folders set it) the codec does not decode the code the LM drew but, for
each speech token, the mean value of the nucleus it was drawn from: the LM still reads the drawn code, but
the audio carries what the LM hesitated between rather than one guess (docs/reference-model.md, tenth
round). The nucleus is the one the draw sorted already, so it costs one small weighted sum per step.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spade_tts.codec import CODEC_CONFIG, CODEC_WEIGHTS
from spade_tts.families import BUILTIN_MODEL, shipped_folder
from spade_tts.families.base import GenerationConfig, GenerationRequest, SpeechLayout, SpeechLM, Utterance
from spade_tts.families.generate import Generation, sorted_for_nucleus


@functools.lru_cache(maxsize=4096)
def _phones(text: str) -> tuple[str, ...]:
    """flite's phones of ``text`` (the model's text front end), cached: prompts repeat across items."""
    from spade_tts.data.voices import g2p

    return tuple(g2p(text))


def item_uniforms(seed: int, item: int, steps: int) -> torch.Tensor:
    """(steps, 2) uniform draws owned by one item: column 0 decides moving on, column 1 picks the code."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(item)]).generate_state(1)[0]))
    return torch.rand(steps, 2, generator=gen)


def _nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities sorted descending with the tail past ``top_p`` zeroed, their columns, perhaps only as many
    as the nucleus can reach); not normalized."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = sorted_for_nucleus(probs, top_p)
    if top_p < 1.0:
        sorted_p = sorted_p * (sorted_p.cumsum(dim=-1) - sorted_p < top_p)
    return sorted_p, order


def _draw(sorted_p: torch.Tensor, order: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A column per row of a nucleus (:func:`_nucleus`), by inverse CDF with one uniform ``u`` per row."""
    cdf = sorted_p.cumsum(dim=-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None].contiguous(), right=True).clamp_(max=cdf.shape[1] - 1)
    return order.gather(1, pick).squeeze(1)


def _nucleus_mean(sorted_p: torch.Tensor, order: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(rows, dims): the mean of ``values`` (codes, dims) over each row's nucleus, weighted by its probabilities."""
    return torch.einsum("rk,rkd->rd", sorted_p / sorted_p.sum(dim=-1, keepdim=True), values[order])


def _move_on_logit(logits: torch.Tensor, nxt_cols: torch.Tensor, move_on: slice | None) -> torch.Tensor:
    """The logit of moving on: of the next phone (or end) alone, or of every token in ``move_on``."""
    if move_on is None:
        return logits.gather(1, nxt_cols[:, None]).squeeze(1)
    return torch.logsumexp(logits[:, move_on].float(), dim=1)


def _move_on_probability(speech: torch.Tensor, adv_logit: torch.Tensor) -> torch.Tensor:
    """exp(adv) / (exp(adv) + sum exp(speech)), as a sigmoid of adv - logsumexp(speech): no copy of 15,360 speech
    logits to append one column. The log-sum-exp is spelled out because ``torch.logsumexp`` adds infinity handling
    (abs, eq, where) that a speech row, whose logits are always finite, does not need."""
    speech = speech.float()
    top = speech.amax(dim=1, keepdim=True)
    lse = (speech - top).exp_().sum(dim=1).log_() + top[:, 0]
    return torch.sigmoid(adv_logit.float() - lse)


def choose_tokens(logits: torch.Tensor, lo: int, hi: int, nxt_cols: torch.Tensor, cfg: GenerationConfig,
                  u: torch.Tensor | None, move_on: slice | None = None,
                  values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per row: move on to column ``nxt_cols`` (next phone or end) or emit a speech column from [lo, hi).

    The move-on decision is taken with the model's own probability of *any* non-speech token
    (``move_on``: phones and end; by default just ``nxt_cols``) at temperature 1 and without a
    nucleus cut; then a speech token is sampled with temperature and top-p. Two things make
    phones last far too long otherwise: the mass a small model spreads over the wrong next
    phone is timing information too, and a tempered nucleus draw against thousands of speech
    codes moves mass away from the single move-on token. ``u`` (rows, 2): the rows' uniform draws.

    Returns the columns and, given the codes' ``values`` (codes, dims), per row the mean value of what its
    speech code is drawn from (soft decoding): over the nucleus the draw sorted anyway; greedy, the top code's.
    """
    speech = logits[:, lo:hi]
    adv_logit = _move_on_logit(logits, nxt_cols, move_on)
    if cfg.greedy or cfg.temperature <= 0:
        advance = adv_logit > speech.max(dim=-1).values
        codes = speech.argmax(dim=-1)
        mean = None if values is None else values[codes]
    else:
        advance = u[:, 0] < _move_on_probability(speech, adv_logit)
        sorted_p, order = _nucleus(speech, cfg.temperature, cfg.top_p)
        codes = _draw(sorted_p, order, u[:, 1])
        mean = None if values is None else _nucleus_mean(sorted_p, order, values)
    return torch.where(advance, nxt_cols, codes + lo), mean


def token_distribution(logits: torch.Tensor, lo: int, hi: int, nxt_col: int, cfg: GenerationConfig,
                       move_on: slice | None = None,
                       values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What :func:`choose_tokens` draws from for one row (``logits``: (columns,)), as float64 probabilities, and,
    given ``values``, the mean code value a speech code drawn there stands for (as :func:`choose_tokens`)."""
    out = torch.zeros(logits.shape[-1], dtype=torch.float64)
    nxt = torch.tensor([nxt_col], device=logits.device)
    if cfg.greedy or cfg.temperature <= 0:
        cols, mean = choose_tokens(logits[None], lo, hi, nxt, cfg, None, move_on, values)
        out[int(cols[0])] = 1.0
        return out, None if mean is None else mean[0]
    speech = logits[None, lo:hi]
    p_adv = float(_move_on_probability(speech, _move_on_logit(logits[None], nxt, move_on))[0])
    sorted_p, order = _nucleus(speech, cfg.temperature, cfg.top_p)
    nucleus = torch.zeros(hi - lo, dtype=torch.float64).scatter_(0, order[0].cpu(), sorted_p[0].double().cpu())
    out[lo:hi] = (1.0 - p_adv) * nucleus / nucleus.sum()
    out[nxt_col] += p_adv
    return out, None if values is None else _nucleus_mean(sorted_p, order, values)[0]


def shipped_sampling(path: Path) -> dict:
    """Temperature, top-p and ``soft_codes`` from the model folder's ``generation_config.json`` (Hugging Face's
    keys and ours), else temperature 1 with a 0.8 nucleus, decoding the drawn codes. The best settings are a
    property of the weights: the shipped model reads at 45.7 % WER at 0.7 against 67.1 % at 1.0
    (docs/reference-model.md), so it says so in its folder, and the students pruned from it inherit the file."""
    f = Path(path) / "generation_config.json"
    shipped = json.loads(f.read_text()) if f.is_file() else {}
    return {"temperature": float(shipped.get("temperature", 1.0)), "top_p": float(shipped.get("top_p", 0.8)),
            "soft_codes": bool(shipped.get("soft_codes", False))}


def write_soft_codes(folder: Path, soft_codes: bool) -> None:
    """Put ``soft_codes`` into the ``generation_config.json`` that Hugging Face's ``save_pretrained`` wrote in
    ``folder``: its ``GenerationConfig`` drops keys it does not know when it loads, so ours goes back in by hand."""
    from spade_tts.io import write_json

    config = Path(folder) / "generation_config.json"
    write_json(config, {**json.loads(config.read_text()), "soft_codes": bool(soft_codes)})


def codec_folder(path: Path) -> Path:
    """Where a model folder's codec weights are: in it, or, for a student kept without them (the shipped
    student: 11 MB not stored twice), in the model it was pruned from (``source_model`` of its
    ``spade_pruning.json``), provided that model's codec has the same configuration."""
    from spade_tts.pruning.prune import PRUNING_FILE

    if (path / CODEC_WEIGHTS).is_file():
        return path
    record = path / PRUNING_FILE
    source = json.loads(record.read_text()).get("source_model") if record.is_file() else None
    folder = (shipped_folder(source) or Path(source)) if source else None
    same = folder is not None and all((d / CODEC_CONFIG).is_file() for d in (folder, path)) and \
        json.loads((folder / CODEC_CONFIG).read_text()) == json.loads((path / CODEC_CONFIG).read_text())
    if not same or not (folder / CODEC_WEIGHTS).is_file():
        raise FileNotFoundError(f"no codec weights in {path} (codec.safetensors), and no model it was pruned from "
                                "holds the same codec: copy codec.json and codec.safetensors from the full model")
    return folder


@dataclass
class PhoneRequest(GenerationRequest):
    """A prompt that already ends with the first target phone, the target's phones, and the prompt's
    speaking rate (speech tokens per phone), which ``max_length_ratio`` turns into a length cap."""

    target_phones: list[int] = field(default_factory=list)
    prompt_frames: int = 0
    prompt_phones: int = 0


class PhoneForcedSampler:
    """The builtin family's rule: speech tokens, or the next phone, in order; rows are independent."""

    independent_rows = True

    def __init__(self, tts: "BuiltinSpeechLM", requests: list[PhoneRequest], cfg: GenerationConfig, item_ids: list[int]):
        vocab, tps = tts.vocab, tts.codec.config.tokens_per_second
        self.cfg, self.vocab = cfg, vocab
        self.rows = tts.layout.head_rows()  # speech_end, the phones, the speech codes: one contiguous block
        self.off = int(self.rows[0])
        self.lo, self.hi = vocab.speech_offset - self.off, vocab.size - self.off
        # speech_end sits just before the phones in the vocabulary: one slice covers every move-on token
        self.move_on = slice(vocab.speech_end - self.off, vocab.speech_offset - self.off) if cfg.any_move_on else None
        self.targets = [r.target_phones for r in requests]
        self.max_phone = max(1, int(cfg.max_phone_seconds * tps))
        max_total = int(cfg.max_seconds * tps)
        self.caps = [max_total] * len(requests)
        if cfg.max_length_ratio > 0:  # a broken model's babble ends early; never below one second
            self.caps = [max(1, min(max_total, int(max(cfg.max_length_ratio * r.prompt_frames / max(1, r.prompt_phones)
                                                       * len(r.target_phones), tps)))) for r in requests]
        self.max_steps = max_total + max(len(t) for t in self.targets) + 1
        sampled = not cfg.greedy and cfg.temperature > 0
        self.uniforms = torch.stack([item_uniforms(cfg.seed, i, self.max_steps) for i in item_ids]) if sampled else None
        n = len(requests)
        self.pointer = [1] * n  # index of the next target phone to force (the first is in the prompt)
        self.frames_in_phone = [0] * n
        self.out: list[list[int]] = [[] for _ in range(n)]
        self.codes = [0] * n
        self.guard_hits = [0] * n
        self.truncated = [False] * n
        self.done = [False] * n
        self.at_guard = [False] * n  # distribution() found the phone at its length limit (speculative decoding)
        # soft decoding: per row, the expected code values of each speech token it emitted, and of the step in
        # hand (set by choose() or distribution() from the logits the token was drawn from, read by push())
        self.values = tts.codec.code_values().to(tts.lm.device) if cfg.soft_codes else None
        self.soft: list[list[torch.Tensor]] = [[] for _ in range(n)]
        self.step_values: list[torch.Tensor | None] = [None] * n

    def _next_phone(self, b: int) -> int:
        """The token that moving on emits: the next target phone, or speech_end after the last."""
        return self.targets[b][self.pointer[b]] if self.pointer[b] < len(self.targets[b]) else self.vocab.speech_end

    def choose(self, step: int, logits: torch.Tensor, live: list[int]) -> list[int]:
        nxt = [self._next_phone(b) for b in live]
        u = self.uniforms[live, step].to(logits.device) if self.uniforms is not None else None
        nxt_cols = torch.tensor(nxt, device=logits.device) - self.off
        chosen, means = choose_tokens(logits, self.lo, self.hi, nxt_cols, self.cfg, u, self.move_on, self.values)
        if means is not None:
            for j, b in enumerate(live):
                self.step_values[b] = means[j]
        choice = (chosen + self.off).tolist()
        for j, b in enumerate(live):
            if self.done[b]:
                choice[j] = self.vocab.speech_end  # a finished row still in the batch steps with a known token; ignored
                continue
            if choice[j] >= self.vocab.speech_offset and self.frames_in_phone[b] >= self.max_phone:
                choice[j] = nxt[j]  # length guard: this phone has lasted too long
                self.guard_hits[b] += 1
            self.push(b, choice[j])
        return choice

    def push(self, b: int, token: int) -> None:
        """Item ``b`` emits ``token`` (a speech code, its next phone or speech_end)."""
        vocab = self.vocab
        if self.at_guard[b]:  # the move distribution() forced
            self.guard_hits[b] += 1
            self.at_guard[b] = False
        self.out[b].append(token)
        if token >= vocab.speech_offset:
            if self.values is not None:
                self.soft[b].append(self.step_values[b])
            self.codes[b] += 1
            self.frames_in_phone[b] += 1
            if self.codes[b] >= self.caps[b]:
                self.done[b] = self.truncated[b] = True
        elif token == vocab.speech_end:
            self.done[b] = True
        else:
            self.pointer[b] += 1
            self.frames_in_phone[b] = 0

    def finished(self, b: int) -> bool:
        return self.done[b]

    def result(self, b: int) -> Generation:
        values = None
        if self.values is not None:
            values = (torch.stack(self.soft[b]) if self.soft[b] else self.values[:0]).float().cpu().numpy()
        return Generation(self.out[b], self.guard_hits[b], self.truncated[b], values)

    # what speculative decoding needs (spade_tts.families.speculative): the rule as a distribution
    def distribution(self, b: int, logits: torch.Tensor) -> torch.Tensor:
        """Item ``b``'s next-token distribution over the columns (float64), what :meth:`choose` draws from.

        A phone past ``max_phone_seconds`` moves on for sure. The move is counted as a guard hit when it
        is pushed if the rule without the guard could have gone on with speech: exactly :meth:`choose`'s
        count when greedy; when sampling, an upper bound (choose counts only the draws that were speech).
        """
        nxt_col = self._next_phone(b) - self.off
        free, self.step_values[b] = token_distribution(logits.float(), self.lo, self.hi, nxt_col, self.cfg,
                                                       self.move_on, self.values)
        self.at_guard[b] = self.frames_in_phone[b] >= self.max_phone and float(free[nxt_col]) < 1.0
        if self.frames_in_phone[b] < self.max_phone:
            return free
        out = torch.zeros_like(free)
        out[nxt_col] = 1.0
        return out

    def snapshot(self, b: int):
        return (len(self.out[b]), self.pointer[b], self.frames_in_phone[b], self.codes[b], self.guard_hits[b],
                self.truncated[b], self.done[b], self.at_guard[b])

    def restore(self, b: int, snap) -> None:
        (n, self.pointer[b], self.frames_in_phone[b], self.codes[b], self.guard_hits[b], self.truncated[b],
         self.done[b], self.at_guard[b]) = snap
        del self.out[b][n:]
        del self.soft[b][self.codes[b]:]


class BuiltinSpeechLM(SpeechLM):
    """The built-in LLM-TTS: phones in, LLaSA-style speech tokens out, Griffin-Lim to audio (16 kHz)."""

    family = "builtin"
    ships_training_data = True

    def __init__(self, path: Path, lm, vocab, codec):
        layout = SpeechLayout(speech_start=vocab.speech_offset, speech_end=vocab.size, stop_ids=(vocab.speech_end,),
                              extra_ids=tuple(range(vocab.phone_offset, vocab.speech_offset)))
        super().__init__(path, lm.eval(), vocab, layout)
        self.vocab, self.codec = vocab, codec
        self.sampling = shipped_sampling(path)

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        return (path / "spade_vocab.json").is_file() and (path / CODEC_CONFIG).is_file()

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, dtype: torch.dtype | str = "auto",
                        device: str = "cpu") -> "BuiltinSpeechLM":
        from transformers import LlamaForCausalLM

        from spade_tts.codec import load_tokenizer
        from spade_tts.reference.vocab import Vocab

        path = Path(path) if path else BUILTIN_MODEL
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no model in {path}: expected a Hugging Face folder with config.json "
                                    "(train one with `spade train-reference`)")
        vocab = Vocab.load(path)
        lm = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32 if dtype == "auto" else dtype).to(device)
        return cls(path, lm, vocab, load_tokenizer(codec_folder(path)))

    def save_pretrained(self, out: str | Path) -> None:
        out = Path(out)
        self.lm.save_pretrained(out)
        write_soft_codes(out, self.sampling["soft_codes"])
        self.vocab.save(out)
        self.codec.save(out)

    @property
    def pad_id(self) -> int:
        return self.vocab.pad

    def prompt_ids(self, text: str, prompt_text: str = "", prompt_codes: np.ndarray | None = None) -> list[int]:
        codes = [] if prompt_codes is None else prompt_codes
        return self.vocab.prompt_ids(self.vocab.phone_ids(list(_phones(prompt_text))) if prompt_text else [],
                                     self.vocab.phone_ids(list(_phones(text))), codes)

    def codes_to_ids(self, codes: np.ndarray) -> list[int]:
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        if codes.size and (codes.min() < 0 or codes.max() >= self.vocab.num_speech):
            raise ValueError(f"speech codes must lie in [0, {self.vocab.num_speech}), got {codes.min()}..{codes.max()}")
        return self.vocab.speech_ids(codes)

    def generation_request(self, text: str, prompt_text: str = "", prompt_codes: np.ndarray | None = None) -> PhoneRequest:
        from spade_tts.text import check_english

        check_english(text, what="target text")
        if prompt_text:
            check_english(prompt_text, what="prompt text")
        codes = np.zeros(0, dtype=np.int64) if prompt_codes is None else np.asarray(prompt_codes)
        pphones = self.vocab.phone_ids(list(_phones(prompt_text))) if prompt_text else []
        tphones = self.vocab.phone_ids(list(_phones(text)))
        return PhoneRequest(self.vocab.prompt_ids(pphones, tphones, codes) + [tphones[0]], target_phones=tphones,
                            prompt_frames=len(codes), prompt_phones=len(pphones))

    def sampler(self, requests, cfg: GenerationConfig, item_ids: list[int]) -> PhoneForcedSampler:
        if not all(isinstance(r, PhoneRequest) for r in requests):
            raise TypeError("the builtin family generates from PhoneRequest (SpeechLM.generation_request)")
        return PhoneForcedSampler(self, requests, cfg, item_ids)

    def generation_defaults(self, **overrides) -> GenerationConfig:
        """The sampling the model folder ships (:func:`shipped_sampling`) on the speech codes; the move-on choice
        is never tempered."""
        return GenerationConfig(**{**self.sampling, **overrides})

    def training_sequence(self, target: Utterance, prompt: Utterance | None = None) -> tuple[list[int], int]:
        """The phone-interleaved layout the model was trained on: the target's phones need timings."""
        from spade_tts.reference.vocab import frames_per_phone

        if not target.phones:
            raise ValueError("the builtin model's sequences interleave phones with speech: the target needs phone "
                             "timings (a corpus row with 'phones', from an aligned voice)")
        p_ph = []
        if prompt is not None:
            p_ph = (self.vocab.phone_ids([p for p, _ in prompt.phones]) if prompt.phones
                    else self.vocab.phone_ids(list(_phones(prompt.text))))
        p_codes = [] if prompt is None else list(prompt.codes)
        t_ph = self.vocab.phone_ids([p for p, _ in target.phones])
        frames = frames_per_phone([e for _, e in target.phones], self.codec.config.tokens_per_second, len(target.codes))
        return self.vocab.training_ids(p_ph, t_ph, p_codes, list(target.codes), frames)

    def encode_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from spade_tts.audio import to_mono_16k

        return np.asarray(self.codec.encode(to_mono_16k(np.asarray(audio, dtype=np.float32), sample_rate)),
                          dtype=np.int64)

    def decode_audio(self, codes: np.ndarray) -> tuple[np.ndarray, int]:
        """Griffin-Lim with fixed initial phases (seed 0), so the same codes always give the same audio."""
        return np.asarray(self.codec.decode(np.asarray(codes, dtype=np.int64).tolist(), seed=0), dtype=np.float32), 16000

    def decode_generation(self, gen: Generation) -> tuple[np.ndarray, np.ndarray, int]:
        """The drawn codes; the audio of the expected code values where the generation kept them (soft_codes)."""
        if gen.code_values is None:
            return super().decode_generation(gen)
        codes = self.ids_to_codes(self.speech_ids(gen.ids))
        if len(gen.code_values) != len(codes):
            raise ValueError(f"{len(gen.code_values)} code values for {len(codes)} speech codes: the generation's "
                             "values must come one per speech code")
        return codes, np.asarray(self.codec.decode_values(gen.code_values, seed=0), dtype=np.float32), 16000

    def distill_data(self, cfg, split: str = "train") -> Path:
        """The teacher's own pairs from a fixed ``data_fraction`` of its tokenized corpus (``tokens_dir``); the
        held-out split in full (what neither model trained on)."""
        from spade_tts.reference.dataset import token_index
        from spade_tts.reference.distill_data import build_reference_dataset

        codes = int(token_index(cfg.tokens_dir)["num_speech"])
        if codes != self.vocab.num_speech:
            raise ValueError(f"tokens_dir={cfg.tokens_dir} holds {codes}-code speech tokens but the teacher reads "
                             f"{self.vocab.num_speech}: give the tokens made by the teacher's own tokenizer "
                             "(the built-in model's: `spade train-reference --recipe recipes/reference-cpu.yaml`)")
        fraction, pairs = (cfg.data_fraction, cfg.pairs_per_target) if split == "train" else (1.0, 1)
        return build_reference_dataset(cfg.tokens_dir, cfg.data_dir, fraction, cfg.data_seed, pairs,
                                       cfg.max_prompt_seconds, cfg.max_target_seconds, split=split,
                                       prompt_loss=self.trained_on_prompt_speech())

    def trained_on_prompt_speech(self) -> bool:
        """Whether the model learned to predict the prompt's speech too (``prompt_loss`` of its training run).
        The student is taught where its teacher was: on a teacher trained without it, the prompt positions
        hold no learned distribution, and teaching them costs the student's capacity for the target."""
        f = self.path / "spade_train_config.json"
        if not f.is_file():
            return False
        return bool(json.loads(f.read_text()).get("prompt_loss", True))  # attempt 1's folder predates the key: it did

    def tokenize_corpus(self, corpus_dir: str | Path, out_dir: str | Path) -> None:
        """Every phone-aligned utterance of the corpus through this model's codec (data/reference_tokens)."""
        from spade_tts.reference.dataset import prepare_tokens

        prepare_tokens(corpus_dir, self.path, out_dir)

    def codec_params(self) -> int:
        return self.codec.num_params
