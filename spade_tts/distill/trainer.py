"""`spade distill`: recover a pruned student by multi-level distillation from the frozen full model.

Built on Hugging Face Accelerate so that the same code and the same arguments run

* on one CPU or GPU: ``spade distill --recipe recipes/distill.yaml student=runs/pruned``;
* on several GPUs or nodes: ``accelerate launch -m spade_tts.distill --recipe ... student=...``
  (DDP by default; FSDP through the user's ``accelerate config``), see docs/distillation.md.

The teacher is frozen (``requires_grad=False``), in eval mode, outside the optimizer, and only
moved to the device: it is never wrapped in DDP (it has no gradients to synchronise) and under
bf16 mixed precision it is held in bf16, so it costs half its fp32 size on every GPU.

Gradient accumulation is written out (``no_sync`` on all but the last micro-batch), and each
optimizer step reads a global batch that is a pure function of (seed, step) and is split over
processes and micro-batches the same way (:meth:`TokenDataset.micro_batch`): 2 processes with
accumulation 1 train on exactly what 1 process with accumulation 2 trains on, and a resumed
run reads exactly the batches the killed one would have.

Nothing is lost: every ``save_every`` steps ``accelerator.save_state`` (model, optimizer,
scheduler, RNG of every process, fp16 loss scaler) goes to a temporary folder that is renamed to
``checkpoints/step-N`` only once complete, with ``trainer_state.json`` (step, data position,
elapsed time); rerunning the same command resumes from the newest one. A NaN/Inf loss or
gradient stops the run before the bad update, with the last good checkpoint untouched.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from spade_tts.distill.data import TokenDataset, check_fraction, describe
from spade_tts.distill.losses import KD_TYPES, TERMS, DistillLoss, LossWeights
from spade_tts.distill.matching import MODES, PRUNING_FILE, layer_matching, read_pruning_record
from spade_tts.families import BUILTIN_TOKENS
from spade_tts.families.registry import model_folder
from spade_tts.io import write_text
from spade_tts.schedule import warmup_cosine

PRECISIONS = ("no", "bf16", "fp16")
STATE_FILE = "trainer_state.json"


@dataclass
class DistillConfig:
    # models
    teacher: str = ""  # HF folder of the full model; '' = the built-in reference model
    student: str = ""  # folder written by `spade prune` (holds spade_pruning.json)
    family: str = ""  # LLM-TTS family of teacher and student (llasa, orpheus, ...); '' = detect from the teacher
    family_config: str = ""  # the generic family's YAML when it is not next to the checkpoints
    out_dir: str = "runs/distill"
    # data
    dataset: str = ""  # a prebuilt token dataset folder (docs/distillation.md); '' = build from tokens_dir
    tokens_dir: str = BUILTIN_TOKENS  # the built-in model's tokenized corpus
    data_dir: str = "data/distill"  # built datasets are kept here, one subfolder per setting, and reused
    data_fraction: float = 0.05  # share of the teacher's training utterances (or of dataset=... rows) used
    data_seed: int = 0  # picks the subset; fixed so runs and ablations see the same data
    pairs_per_target: int = 2  # (prompt, target) sequences per target utterance
    max_prompt_seconds: float = 4.0
    max_target_seconds: float = 7.5
    # optimisation
    steps: int = 1000  # optimizer steps
    lr: float = 2e-4
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup: int = 50
    weight_decay: float = 0.0
    batch_size: int = 8  # sequences per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step; global batch = batch_size * grad_accum * processes
    max_grad_norm: float = 1.0  # 0 = no clipping
    time_budget_minutes: float = 0.0  # stop, checkpoint and export after this much training time (0 = none);
    #                                   the cosine then follows time, so the run still ends at a low lr
    mixed_precision: str | bool = "no"  # no | bf16 | fp16 (autocast; master weights stay fp32); YAML reads no as false
    gradient_checkpointing: bool = False  # recompute student layers in backward (large models)
    device: str = "auto"  # auto | cpu (accelerate launch decides the GPU of each process)
    # loss (SPADE: alpha = 0.25 on CE, (1 - alpha) / 4 on each other term; weight 0 = term off)
    matching: str = "dynamic"  # dynamic (student n -> teacher r_{n+1} - 1) | static (-> r_n)
    w_ce: float = 0.25
    w_logits: float = 0.1875
    w_latents: float = 0.1875
    w_attn: float = 0.1875
    w_emb: float = 0.1875
    kd: str = "skew_forward"  # skew_forward | skew_reverse | forward | reverse
    temperature: float = 1.0
    skew_beta: float = 0.1
    # held-out loss: the student's CE on sequences it never trains on, every eval_every steps; out_dir/best keeps
    # the student at its minimum (on a small subset the student memorises it: the training loss keeps falling
    # while the held-out one turns up)
    eval_every: int = 0  # 0 = off
    eval_sequences: int = 64
    heldout_dataset: str = ""  # '' = the teacher's held-out utterances (built-in) or the rows of dataset=...
    #                           left out by data_fraction
    # bookkeeping
    save_every: int = 200  # steps between checkpoints (model, optimizer, scheduler, data position)
    keep_checkpoints: int = 2
    log_every: int = 10
    save_dtype: str = "auto"  # dtype of out_dir/final: auto (the student's stored dtype), float32, bfloat16, float16
    seed: int = 0


# ---------------------------------------------------------------------------------------------- checks and setup

def check_config(cfg: DistillConfig) -> tuple[Path, Path, dict]:
    """Cheap checks before anything is loaded: (teacher folder, student folder, pruning record)."""
    if not cfg.student:
        raise ValueError("no student: give student=FOLDER, a model written by `spade prune`")
    student = Path(cfg.student)
    if not student.is_dir() or not ((student / "config.json").is_file() or (student / PRUNING_FILE).is_file()):
        raise FileNotFoundError(f"student folder {student} not found or has no config.json: make it with "
                                "`spade prune -o FOLDER`")
    teacher = model_folder(cfg.teacher or None)
    if not teacher.is_dir() or not ((teacher / "config.json").is_file() or cfg.family or family_of(cfg, teacher)):
        raise FileNotFoundError(f"teacher folder {teacher} not found or has no config.json")
    record = read_pruning_record(student)
    check_fraction(cfg.data_fraction)
    if cfg.time_budget_minutes < 0:
        raise ValueError(f"time_budget_minutes={cfg.time_budget_minutes} must be >= 0 (0 = no limit)")
    if cfg.mixed_precision is False:  # `mixed_precision=no` arrives as YAML's boolean false
        cfg.mixed_precision = "no"
    for name, value, allowed in (("matching", cfg.matching, MODES), ("kd", cfg.kd, KD_TYPES),
                                 ("mixed_precision", cfg.mixed_precision, PRECISIONS),
                                 ("save_dtype", cfg.save_dtype, ("auto", "float32", "bfloat16", "float16")),
                                 ("device", cfg.device, ("auto", "cpu"))):
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    for name in ("steps", "batch_size", "grad_accum", "save_every", "log_every", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be >= 1")
    if cfg.lr <= 0 or cfg.warmup < 0 or cfg.temperature <= 0 or not 0 <= cfg.skew_beta < 1:
        raise ValueError("need lr > 0, warmup >= 0, temperature > 0 and skew_beta in [0, 1)")
    if any(getattr(cfg, f"w_{t}") < 0 for t in TERMS) or not any(getattr(cfg, f"w_{t}") for t in TERMS):
        raise ValueError("loss weights must be >= 0 and at least one of w_ce, w_logits, w_latents, w_attn, w_emb > 0")
    return teacher, student, record


def loss_weights(cfg: DistillConfig) -> LossWeights:
    return LossWeights(**{t: getattr(cfg, f"w_{t}") for t in TERMS})


def lr_factor(step: int, cfg: DistillConfig, time_progress: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` at ``steps`` (or at the time budget)."""
    return warmup_cosine(step, cfg.warmup, cfg.steps, cfg.min_lr_ratio, time_progress)


def family_of(cfg: DistillConfig, teacher_dir: Path) -> str | None:
    """The LLM-TTS family the models are loaded through (the built-in model is one), or None for a plain HF
    causal LM distilled on a prebuilt dataset."""
    if cfg.family or cfg.family_config:
        return cfg.family or "generic"
    if not Path(teacher_dir).is_dir():
        return None
    from spade_tts.families.registry import find_family

    return find_family(teacher_dir)


def load_models(teacher_dir: Path, student_dir: Path, record: dict, cfg: DistillConfig, device):
    """(teacher, student, student's SpeechLM or None): the teacher frozen and in eval mode on ``device``, the
    student in fp32 for training.

    A family checkpoint (the built-in model, LLaSA, Orpheus, CosyVoice 2, ...) is loaded by its adapter;
    the models returned are the adapters' ``.lm``, and the student's adapter goes to :func:`export_final`,
    which writes the family's own format with it.
    """
    from transformers import AutoModelForCausalLM

    from spade_tts.pruning.layers import decoder_layers, model_fingerprint

    teacher_dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32
    family = family_of(cfg, teacher_dir)
    if family is not None:
        from spade_tts.families.registry import load_speech_lm

        fam_cfg = cfg.family_config or None
        teacher = load_speech_lm(teacher_dir, family, dtype=teacher_dtype, family_config=fam_cfg).lm
        student_speech = load_speech_lm(student_dir, family, dtype=torch.float32, family_config=fam_cfg)
    else:
        student_speech = None
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=teacher_dtype)
    depth = len(decoder_layers(teacher))
    if depth != int(record["teacher_layers"]):
        raise ValueError(f"the student was pruned from a {record['teacher_layers']}-layer model but the teacher "
                         f"{teacher_dir} has {depth} layers; give the teacher= it was pruned from")
    expected = record.get("source_fingerprint")
    if expected and model_fingerprint(teacher) != expected:
        raise ValueError(f"the student was pruned from another model (fingerprint {expected}; {teacher_dir} has "
                         f"{model_fingerprint(teacher)}); give the teacher= it was pruned from "
                         f"({record.get('source_model', '?')})")
    teacher.requires_grad_(False)
    teacher.eval()
    teacher.to(device)
    student = student_speech.lm if family is not None else AutoModelForCausalLM.from_pretrained(student_dir,
                                                                                                dtype=torch.float32)
    if len(decoder_layers(student)) != len(record["kept"]):
        raise ValueError(f"{student_dir} has {len(decoder_layers(student))} layers but its {PRUNING_FILE} keeps "
                         f"{len(record['kept'])}; make the student again with `spade prune`")
    if vocab_size(student) != vocab_size(teacher):
        raise ValueError(f"student vocabulary ({vocab_size(student)}) differs from the teacher's "
                         f"({vocab_size(teacher)})")
    if cfg.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.train()
    return teacher, student, student_speech


def vocab_size(model) -> int:
    """Rows of a model's output logits (HF config's vocab_size, else the output head's rows)."""
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(size, int):
        return size
    return int(model.get_output_embeddings().weight.shape[0])


def _family_data(speech, cfg: DistillConfig, split: str) -> Path:
    """The dataset a family makes of its own training data (the built-in model's tokenized corpus)."""
    if speech is None:
        raise ValueError("this teacher is a plain causal LM, not an LLM-TTS family checkpoint, so no dataset can be "
                         "made for it; give dataset=FOLDER (`spade data family`, docs/distillation.md)")
    return speech.distill_data(cfg, split)


def open_dataset(cfg: DistillConfig, speech, vocab_size: int) -> TokenDataset:
    """The prebuilt ``dataset``, or the one the student's family makes of its own data (built once)."""
    if cfg.dataset:
        data = TokenDataset(cfg.dataset, seed=cfg.seed, fraction=cfg.data_fraction)
    else:
        data = TokenDataset(_family_data(speech, cfg, "train"), seed=cfg.seed)
    if int(data.meta.get("vocab_size", 0)) > vocab_size:
        raise ValueError(f"dataset {data.path} uses {data.meta['vocab_size']} token ids but the model has "
                         f"{vocab_size}")
    return data


def open_heldout(cfg: DistillConfig, speech) -> TokenDataset:
    """Sequences for the held-out loss: ``heldout_dataset``, else the rows of ``dataset`` outside the
    ``data_fraction`` subset, else the family's own held-out split (the built-in model's)."""
    if cfg.heldout_dataset:
        return TokenDataset(cfg.heldout_dataset)
    if cfg.dataset:
        if cfg.data_fraction >= 1:
            raise ValueError("eval_every needs held-out sequences: give heldout_dataset=FOLDER, or data_fraction < 1 "
                             "so that the rest of dataset=... is held out")
        return TokenDataset(cfg.dataset, seed=cfg.seed, fraction=cfg.data_fraction, complement=True)
    return TokenDataset(_family_data(speech, cfg, "heldout"))


def heldout_ce(model, data: TokenDataset, cfg: DistillConfig, accelerator) -> float:
    """Mean CE of the student's speech tokens over the first ``eval_sequences`` held-out rows (every process
    computes the same number, so no process waits for another)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        for batch in data.first_batches(cfg.batch_size, cfg.eval_sequences):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            total += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    model.train()
    return total / max(1, count)


# ---------------------------------------------------------------------------------------------- checkpoints

def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (complete = renamed into place, with its trainer_state.json)."""
    done = [p for p in (out / "checkpoints").glob("step-*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(accelerator, out: Path, step: int, state: dict, keep: int) -> Path:
    """``accelerator.save_state`` into a temporary folder, then rename: a checkpoint exists whole or not at all."""
    root = out / "checkpoints"
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        old = sorted((p for p in root.glob("step-*") if p != final), key=lambda p: int(p.name.split("-")[1]))
        for p in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines of steps after ``step`` (written by a run that died before its next checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
    write_text(path, "".join(line + "\n" for line in keep))


def _cast_state(state: dict, dtype: torch.dtype) -> dict:
    """Cast floating tensors; tensors that share storage (tied embeddings/head) stay one tensor, so the
    saved file keeps one copy, as the original checkpoint did."""
    done: dict = {}
    out = {}
    for k, v in state.items():
        if not v.is_floating_point():
            out[k] = v
            continue
        key = (v.data_ptr(), tuple(v.shape), tuple(v.stride()))
        if key not in done:
            done[key] = v.to(dtype)
        out[k] = done[key]
    return out


def export_final(accelerator, model, student_dir: Path, out: Path, cfg: DistillConfig, summary: dict,
                 name: str = "final", speech=None) -> Path:
    """``out/<name>``: save_pretrained (safetensors) + the student's side files + spade_distill.json, atomically."""
    from spade_tts.pruning.prune import side_files

    state = accelerator.get_state_dict(model)  # every process takes part (FSDP gathers the full weights)
    final = out / name
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        stored = json.loads((student_dir / "config.json").read_text()) if (student_dir / "config.json").is_file() else {}
        dtype_name = cfg.save_dtype if cfg.save_dtype != "auto" else (stored.get("dtype") or stored.get("torch_dtype")
                                                                      or "float32")
        dtype = getattr(torch, dtype_name)
        tmp = out / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if speech is not None:
            # the adapter writes its own format from a module: at the end the trained one itself, cast; a
            # mid-run export (best) casts a copy so that training goes on in its own precision
            # (DDP and single-process runs; under FSDP unwrap_model is sharded and this path is untested)
            trained = speech.lm
            speech.lm = (unwrapped if name == "final" else copy.deepcopy(unwrapped)).to(dtype)
            speech.save_pretrained(tmp)
            if name != "final":
                speech.lm = trained
        else:
            state = _cast_state(state, dtype)
            unwrapped.save_pretrained(tmp, state_dict=state)
        if (tmp / "config.json").is_file():
            config = json.loads((tmp / "config.json").read_text())
            for key in ("dtype", "torch_dtype"):
                if key in config:
                    config[key] = dtype_name
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for path in side_files(student_dir) + [student_dir / PRUNING_FILE]:
            if not (tmp / path.name).exists():
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, tmp / path.name)
        (tmp / "spade_distill.json").write_text(json.dumps(summary, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _tensorboard(out: Path, purge_step: int):
    """A SummaryWriter if TensorBoard is installed; otherwise None, quietly (JSONL has everything)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:
        return None
    return SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)


# ---------------------------------------------------------------------------------------------- the loop

def _has_accelerator() -> bool:
    acc = getattr(torch, "accelerator", None)  # torch >= 2.6
    return bool(acc.is_available()) if acc is not None else torch.cuda.is_available()


def distill(cfg: DistillConfig, on_step=None) -> Path:
    """Train the student; returns ``out_dir/final``. Rerun with the same settings to resume.

    ``on_step(step, record)`` is called on every process after each optimizer step (and after
    that step's checkpoint, if any); raising in it stops the run like a kill would.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from tqdm import tqdm

    teacher_dir, student_dir, record = check_config(cfg)
    weights = loss_weights(cfg)
    head_used = bool(weights.ce or weights.logits)
    # On a machine without an accelerator, say so: `accelerate launch`/torchrun processes then join one gloo group.
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.device == "cpu" or not _has_accelerator(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=not head_used)])
    main = accelerator.is_main_process
    set_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    teacher, student, student_speech = load_models(teacher_dir, student_dir, record, cfg, accelerator.device)
    with accelerator.main_process_first():  # the main process builds the dataset; the others then reuse it
        data = open_dataset(cfg, student_speech, vocab_size(student))
        heldout = open_heldout(cfg, student_speech) if cfg.eval_every > 0 else None
    match = layer_matching(record["kept"], int(record["teacher_layers"]), cfg.matching)
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = cfg.batch_size * cfg.grad_accum * world
    data_id = f"{data.path.resolve().name} ({len(data)} rows)"
    models_id = (f"teacher {record.get('source_fingerprint') or teacher_dir}, "
                 f"student {record.get('fingerprint') or student_dir}")

    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    # Not prepared by accelerate (which would step it once per process); saved through register_for_checkpointing.
    budget = 60 * cfg.time_budget_minutes
    progress = [0.0]  # share of the time budget used, read by the schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, progress[0]))
    loss_fn = DistillLoss(teacher, student, match, weights, cfg.kd, cfg.temperature, cfg.skew_beta,
                          teacher_context=accelerator.autocast)  # hooks go on the raw modules, before wrapping
    model, optimizer = accelerator.prepare(student, optimizer)
    loss_fn.student_forward = model
    accelerator.register_for_checkpointing(scheduler)

    step, elapsed = 0, 0.0
    best = {"step": None, "heldout_ce": None}  # the student kept in out_dir/best
    ckpt = latest_checkpoint(out)
    log_path = out / "train_log.jsonl"
    if ckpt is not None:
        state = json.loads((ckpt / STATE_FILE).read_text())
        if state.get("models") != models_id:
            raise ValueError(f"{ckpt} belongs to another run ({state.get('models')}; this one: {models_id}); "
                             "choose another out_dir")
        if state["global_batch"] != global_batch or state["data"] != data_id:
            raise ValueError(f"{ckpt} was trained with global batch {state['global_batch']} on {state['data']}; "
                             f"this run has {global_batch} on {data_id}: keep batch_size * grad_accum * processes "
                             "and the data the same to resume, or choose another out_dir")
        accelerator.load_state(str(ckpt))
        step, elapsed = int(state["step"]), float(state.get("elapsed_seconds", 0.0))
        best = state.get("best") or best
        if main:
            _truncate_log(log_path, step)
            print(f"resumed from {ckpt} at step {step}")
    if main:
        (out / "distill_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        print(f"distill: teacher {teacher_dir} ({record['teacher_layers']} layers) -> student {student_dir} "
              f"(layers {record['kept']}), {cfg.matching} matching {match}; {world} process(es), global batch "
              f"{global_batch}; data: {describe(data.meta)}")

    log = open(log_path, "a") if main else None
    tb = _tensorboard(out, step) if main else None
    # with a time budget the bar counts the budget's seconds (the step count is then only a ceiling)
    bar = (tqdm(total=int(budget), initial=int(elapsed), desc="distill (time budget)", unit="s", disable=not main)
           if budget > 0 else tqdm(total=cfg.steps, initial=step, desc="distill", unit="step", disable=not main))
    start, last_good = time.time(), (str(ckpt) if ckpt else None)
    terms_order = ["loss"] + weights.enabled()

    def over_budget() -> bool:
        if budget > 0:
            progress[0] = (elapsed + time.time() - start) / budget
        return progress[0] >= 1.0

    def summary_of(at: int) -> dict:
        return {"format": "spade-distill/1", "teacher": str(cfg.teacher or "built-in"), "student": str(student_dir),
                "kept": record["kept"], "teacher_layers": record["teacher_layers"], "matching": cfg.matching,
                "match": match, "steps": at, "planned_steps": cfg.steps, "global_batch": global_batch,
                "processes": world, "stopped_by": "steps" if at >= cfg.steps else "time_budget",
                "wall_seconds": state_now()["elapsed_seconds"], "data": data.meta,
                "heldout": None if heldout is None else heldout.meta, "config": asdict(cfg)}

    def state_now() -> dict:
        return {"step": step, "global_batch": global_batch, "data": data_id, "models": models_id,
                "data_position": step * global_batch, "elapsed_seconds": round(elapsed + time.time() - start, 3),
                "world_size": world, "best": best}

    def stop(what: str, value: float, detail: str) -> None:
        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
        raise RuntimeError(f"{what} became {value} at step {step + 1} ({detail}); stopped before updating the model, "
                           f"{where}: rerun with a lower lr= (now {cfg.lr:g}) or mixed_precision=no to resume from it")

    try:
        while step < cfg.steps and not over_budget():
            sums = torch.zeros(len(terms_order), device=accelerator.device)
            tokens = 0
            for micro in range(cfg.grad_accum):
                batch = data.micro_batch(step, micro, rank, world, cfg.grad_accum, cfg.batch_size)
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                tokens += int(batch["attention_mask"].sum())
                sync = contextlib.nullcontext() if micro == cfg.grad_accum - 1 else accelerator.no_sync(model)
                with sync:
                    total, terms = loss_fn(batch)
                    values = torch.stack([total.detach().float()] + [terms[t].detach().float()
                                                                     for t in terms_order[1:]])
                    bad = accelerator.reduce((~torch.isfinite(values)).any().float(), "sum")
                    if bad.item() > 0:
                        shown = ", ".join(f"{k}={v:.4g}" for k, v in zip(terms_order, values.tolist()))
                        stop("the loss", float(values[0]), shown)
                    accelerator.backward(total / cfg.grad_accum)
                sums += values / cfg.grad_accum
            grad_norm = None
            if cfg.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
                if not math.isfinite(grad_norm) and cfg.mixed_precision != "fp16":  # fp16: the scaler skips the step
                    stop("the gradient norm", grad_norm, f"loss={float(sums[0]):.4g}")
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            over = over_budget()  # also sets the schedule's time progress for the next step
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            means = accelerator.reduce(sums, "mean").tolist()
            tokens = int(accelerator.reduce(torch.tensor(tokens, device=accelerator.device), "sum"))
            rec = {"step": step, **{k: round(v, 6) for k, v in zip(terms_order, means)}, "lr": lr,
                   "grad_norm": None if grad_norm is None else round(grad_norm, 4),
                   "tokens": tokens, "seconds": round(elapsed + time.time() - start, 1)}
            bar.update(min(int(rec["seconds"]), bar.total) - bar.n if budget > 0 else 1)
            evaluate = heldout is not None and (step % cfg.eval_every == 0 or step == cfg.steps or over)
            if evaluate:
                rec["heldout_ce"] = round(heldout_ce(model, heldout, cfg, accelerator), 6)
                if best["heldout_ce"] is None or rec["heldout_ce"] < best["heldout_ce"]:
                    best = {"step": step, "heldout_ce": rec["heldout_ce"]}
                    export_final(accelerator, model, student_dir, out, cfg,
                                 {**summary_of(step), "stopped_by": None, "best": best}, "best",
                                 student_speech)
            if main and (step % cfg.log_every == 0 or step == cfg.steps or step == 1 or evaluate):
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if tb is not None:
                    for k in terms_order + ["lr"]:
                        tb.add_scalar(f"train/{k}", rec[k], step)
                bar.set_postfix({"step": step, **{k: f"{rec[k]:.3g}" for k in terms_order}})
            if step % cfg.save_every == 0 or step == cfg.steps or over:
                last_good = str(save_checkpoint(accelerator, out, step, state_now(), cfg.keep_checkpoints))
            if on_step is not None:
                on_step(step, rec)
            if over and main:
                print(f"time budget of {cfg.time_budget_minutes:g} min reached at step {step} of {cfg.steps}; "
                      "exporting the student as it is")
    finally:
        bar.close()
        if log is not None:
            log.close()
        if tb is not None:
            tb.close()
        loss_fn.close()

    summary = {**summary_of(step), "best": best}
    final = export_final(accelerator, model, student_dir, out, cfg, summary, speech=student_speech)
    if main:
        print(f"distilled {step} steps in {summary['wall_seconds']:.0f} s; wrote {final}")
    accelerator.end_training()
    return final
