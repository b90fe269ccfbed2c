"""`spade train-reference`: train the built-in LLaSA-shaped reference LM.

A plain loop on purpose (the distillation stage is the one built on Accelerate): one process,
CPU or one GPU, bf16 autocast on CUDA. Everything needed to continue is in ``last.pt``
(model, optimizer, step; batches are a pure function of (seed, step)), written atomically every
``save_every`` steps, so a killed run, or one stopped by ``time_budget_minutes``, resumes where
it was. ``export/`` is a normal Hugging Face checkpoint (``LlamaForCausalLM.from_pretrained``).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from spade_tts.codec import CODEC_CONFIG, CODEC_FILES
from spade_tts.io import atomic_path, write_json
from spade_tts.reference.dataset import PairSampler, TokenStore
from spade_tts.reference.vocab import Vocab
from spade_tts.schedule import warmup_cosine


@dataclass
class ReferenceTrainConfig:
    corpus_dir: str = "data/corpus"
    codec_dir: str = "data/codec"
    codec: dict = field(default_factory=dict)  # `spade codec fit` settings, run first when codec_dir holds no codec
    tokens_dir: str = "data/reference_tokens"
    out_dir: str = "runs/reference"
    layers: int = 12
    hidden: int = 320
    heads: int = 5
    kv_heads: int = 5
    intermediate: int = 864
    batch_size: int = 64
    lr: float = 8e-4
    warmup: int = 200
    steps: int = 4000
    weight_decay: float = 0.05
    max_prompt_seconds: float = 4.0
    max_target_seconds: float = 7.5
    prompt_loss: bool = False  # count the prompt speech's next-token loss too (attempt 1 did; it is context at synthesis)
    save_every: int = 250  # checkpoint, held-out loss and (when it is the lowest so far) best/ every this many steps
    log_every: int = 25
    heldout_batches: int = 4  # the held-out loss averages this many fixed batches of held-out pairs
    attention_dropout: float = 0.0
    # start the speech rows of the (tied) embedding from the codec's description of each code (FSQ digits, k-means
    # centroids) instead of noise: codes that sound alike start alike, so what is learned for one code carries to its
    # neighbours (the head starts as a product of per-channel softmaxes for FSQ); docs/reference-model.md measures it
    code_embedding_init: bool = False
    # apply the LM head only where the loss counts (the target's speech): same loss to rounding, without a
    # vocabulary-sized matmul at every text and prompt position (with 15,360 codes the head is a third of the model)
    head_on_counted_only: bool = False
    time_budget_minutes: float = 0.0  # training time over all resumed runs, then stop and export; 0 = no limit
    # start from the weights of an exported folder ('built-in' = the shipped model) with a fresh optimizer and a new
    # schedule (warm-up, then this run's cosine): more training for a model whose run and optimizer state are gone.
    # The folder must have this recipe's shape and vocabulary; a run with a last.pt resumes from that instead
    init_from: str = ""
    export_dtype: str = "float16"  # weights committed to git are stored in half precision
    # the sampling the exported folder ships with (its generation_config.json, which the builtin family reads as
    # its default): the best temperature is a property of the weights; None = the family's 1.0 / 0.8
    temperature: float | None = None
    top_p: float | None = None
    soft_codes: bool = False  # the folder decodes each token's nucleus mean, not the drawn code (GenerationConfig)
    loader_workers: int = 0  # processes that build batches ahead (use several on a GPU machine)
    seed: int = 0
    device: str = "auto"


class StepBatches(torch.utils.data.Dataset):
    def __init__(self, sampler: PairSampler, batch_size: int, first: int, end: int):
        self.sampler, self.batch_size, self.first, self.end = sampler, batch_size, first, end

    def __len__(self) -> int:
        return max(0, self.end - self.first)

    def __getitem__(self, i: int) -> dict:
        return self.sampler.batch(self.first + i, self.batch_size)


def build_model(cfg: ReferenceTrainConfig, vocab: Vocab) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab.size, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=True,
        pad_token_id=vocab.pad, bos_token_id=vocab.special("bos"), eos_token_id=vocab.speech_end,
        attention_dropout=cfg.attention_dropout,
    )
    return LlamaForCausalLM(config)


def next_token_loss(model: LlamaForCausalLM, batch: dict[str, torch.Tensor], counted_only: bool) -> torch.Tensor:
    """Mean cross-entropy over the counted next tokens (labels != -100): ``model(**batch).loss``, or with
    ``counted_only`` the same through the head at those positions alone."""
    if not counted_only:
        return model(**batch).loss
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    counted = labels != -100
    return F.cross_entropy(model.lm_head(hidden[:, :-1][counted]).float(), labels[counted])


def init_speech_embedding(model: LlamaForCausalLM, vocab: Vocab, features: torch.Tensor, seed: int) -> None:
    """Speech rows := standardized ``features`` (codes x F) times a fixed random projection to the width, scaled
    to the std of the model's own initialisation; nothing else changes (same class, same config)."""
    if features.shape[0] != vocab.num_speech:
        raise ValueError(f"the codec describes {features.shape[0]} codes but the vocabulary has {vocab.num_speech} "
                         "speech tokens: tokenize the corpus with the same codec (delete tokens_dir and rerun)")
    f = features.float()
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    gen = torch.Generator().manual_seed(seed)
    rows = f @ torch.randn(f.shape[1], model.config.hidden_size, generator=gen)
    rows *= model.config.initializer_range / rows.std()
    with torch.no_grad():
        model.get_input_embeddings().weight[vocab.speech_offset:vocab.speech_offset + vocab.num_speech] = rows


def init_weights(model: LlamaForCausalLM, folder: str) -> None:
    """``model`` takes the weights of an exported folder (``built-in``: the shipped model), in its own dtype;
    a folder of another shape or vocabulary is refused in one line, naming both."""
    from spade_tts.families.registry import model_folder

    path = model_folder(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"init_from={folder}: no exported model in {path} (config.json missing)")
    source = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    mine, theirs = model.config, source.config
    shape = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
             "vocab_size")
    if any(getattr(mine, k) != getattr(theirs, k) for k in shape):
        def show(c):
            return (f"{c.num_hidden_layers} layers x {c.hidden_size} (ffn {c.intermediate_size}, {c.num_attention_heads}"
                    f"/{c.num_key_value_heads} heads), vocabulary {c.vocab_size}")
        raise ValueError(f"init_from={folder} is {show(theirs)} but this recipe builds {show(mine)}; "
                         "train with the recipe the folder was exported by (its spade_train_config.json)")
    model.load_state_dict(source.state_dict())
    print(f"starting from the weights of {path} (a fresh optimizer and schedule)")


def fit_codec_first(cfg: ReferenceTrainConfig) -> None:
    """The tokenizer is the pipeline's first stage: fitted (or resumed) unless codec_dir already holds one."""
    if (Path(cfg.codec_dir) / CODEC_CONFIG).is_file():
        return
    from spade_tts.codec.train import CodecFitConfig, fit_codec
    from spade_tts.config import load_config

    settings = {**cfg.codec, "corpus_dir": cfg.corpus_dir, "out_dir": cfg.codec_dir}
    print(f"fitting the speech tokenizer -> {cfg.codec_dir}")
    fit_codec(load_config(CodecFitConfig, base=settings))


def _save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def lr_at(step: int, cfg: ReferenceTrainConfig, time_progress: float = 0.0) -> float:
    """Warm-up, then cosine to 10 % (following the time budget when one is set)."""
    return cfg.lr * warmup_cosine(step, cfg.warmup, cfg.steps, 0.1, time_progress)


def export(model: LlamaForCausalLM, vocab: Vocab, cfg: ReferenceTrainConfig, directory: Path) -> None:
    """A from_pretrained-able folder: weights, config, vocabulary and the codec it speaks."""
    from spade_tts.families.builtin import write_soft_codes

    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dtype = getattr(torch, cfg.export_dtype)
    half = build_model(cfg, vocab)
    half.load_state_dict(model.state_dict())
    if cfg.temperature is not None or cfg.top_p is not None:
        half.generation_config.update(do_sample=True, **{k: v for k, v in (("temperature", cfg.temperature),
                                                                          ("top_p", cfg.top_p)) if v is not None})
    half.to(dtype).save_pretrained(tmp, max_shard_size="14MB")
    write_soft_codes(tmp, cfg.soft_codes)
    vocab.save(tmp)
    for name in CODEC_FILES:
        src = Path(cfg.codec_dir) / name
        if src.is_file():
            shutil.copy(src, tmp / name)
    (tmp / "spade_train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def train_reference(cfg: ReferenceTrainConfig) -> Path:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fit_codec_first(cfg)
    if not (Path(cfg.tokens_dir) / "tokens.safetensors").is_file():
        from spade_tts.reference.dataset import prepare_tokens

        print(f"tokenizing {cfg.corpus_dir} with the codec in {cfg.codec_dir} -> {cfg.tokens_dir}")
        print(prepare_tokens(cfg.corpus_dir, cfg.codec_dir, cfg.tokens_dir))
    store = TokenStore(cfg.tokens_dir)
    vocab = Vocab(store.num_speech)
    sampler = PairSampler(store, "train", cfg.max_prompt_seconds, cfg.max_target_seconds, cfg.seed, cfg.prompt_loss)
    try:
        val = PairSampler(store, "heldout", cfg.max_prompt_seconds, cfg.max_target_seconds, cfg.seed, cfg.prompt_loss)
    except ValueError:
        val = None  # a corpus without held-out pairs trains without a held-out loss
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, vocab)
    if cfg.code_embedding_init:
        from spade_tts.codec import load_tokenizer

        init_speech_embedding(model, vocab, load_tokenizer(cfg.codec_dir).code_features(), cfg.seed)
    if cfg.init_from and not (out / "last.pt").is_file():  # a run that has a checkpoint resumes from it instead
        init_weights(model, cfg.init_from)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    step, trained_seconds = 0, 0.0
    ckpt = out / "last.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, trained_seconds = state["step"], state.get("seconds", 0.0)
        print(f"resumed from {ckpt} at step {step} ({trained_seconds / 60:.1f} min trained)")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"reference LM: {cfg.layers} layers x {cfg.hidden}, {n_params / 1e6:.1f}M parameters, "
          f"{len(sampler.targets)} training targets, device {device}")
    log = open(out / "train_log.jsonl", "a")
    start = time.time()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="train-reference", unit="step")

    def checkpoint() -> None:
        _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                      "seconds": trained_seconds + time.time() - start}, ckpt)

    budget = 60 * cfg.time_budget_minutes

    def time_progress() -> float:
        """Summed over resumed runs, so a resumed run continues the cosine instead of restarting it."""
        return (trained_seconds + time.time() - start) / budget if budget > 0 else 0.0

    # the same held-out pairs at every evaluation, so the losses compare across steps; built once
    heldout_batches = [val.batch(i, cfg.batch_size) for i in range(max(1, cfg.heldout_batches))] if val else []

    @torch.no_grad()
    def heldout_loss() -> float | None:
        if val is None:
            return None
        model.eval()
        losses = []
        for batch in heldout_batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                losses.append(next_token_loss(model, batch, cfg.head_on_counted_only).item())
        model.train()
        return round(sum(losses) / len(losses), 4)

    best_file = out / "best.json"
    best = json.loads(best_file.read_text()) if best_file.is_file() and step > 0 else None

    def keep_if_best(loss: float | None) -> None:
        """The held-out loss bottoms out and rises again as a small model memorises its sentences,
        so the weights at the minimum are exported to best/ when they are reached."""
        nonlocal best
        if loss is None or (best is not None and loss >= best["heldout_loss"]):
            return
        export(model, vocab, cfg, out / "best")
        best = {"step": step, "heldout_loss": loss}
        write_json(best_file, best)

    # Batches are a pure function of the step, so worker processes can build them ahead.
    spent = budget > 0 and time_progress() >= 1.0  # a finished run only re-exports
    end = step if spent else cfg.steps
    loader = torch.utils.data.DataLoader(StepBatches(sampler, cfg.batch_size, step, end), batch_size=None,
                                         num_workers=cfg.loader_workers, pin_memory=device.type == "cuda")
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        lr = lr_at(step, cfg, time_progress())
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast:
            loss = next_token_loss(model, batch, cfg.head_on_counted_only)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {loss.item()} at step {step}; the last good checkpoint is {ckpt}: "
                               "lower lr= and rerun to resume from it")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            rec = {"step": step, "loss": round(loss.item(), 4), "lr": lr, "seconds": round(trained_seconds + time.time() - start, 1)}
            if step % cfg.save_every == 0 or step == cfg.steps:
                rec["heldout_loss"] = heldout_loss()
                keep_if_best(rec["heldout_loss"])
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=rec["loss"])
        over_budget = budget > 0 and time_progress() >= 1.0
        if step % cfg.save_every == 0 or step == cfg.steps or over_budget:
            checkpoint()
        if over_budget:
            print(f"time budget of {cfg.time_budget_minutes:g} min reached at step {step} "
                  "(raise time_budget_minutes= and rerun to train on)")
            break
    bar.close()
    model.eval()
    export(model.float(), vocab, cfg, out / "export")
    print(f"exported {out / 'export'} at step {step}")
    if best is not None:
        print(f"lowest held-out loss {best['heldout_loss']} at step {best['step']}: {out / 'best'}")
    return out / "export"
