"""Distillation: loss terms, layer matching, data subset, and the Accelerate trainer end to end.

Everything runs on a 4-layer, 32-wide random Llama teacher (grouped-query attention, tied
embeddings) and a student pruned from it by `prune_checkpoint` keeping layers [0, 2], on a tiny
random token dataset: each test takes seconds on a CPU.
"""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spade_tts.distill import data as ddata
from spade_tts.distill.data import TokenDataset, write_token_dataset
from spade_tts.reference import distill_data as builtin_data
from spade_tts.reference.distill_data import build_reference_dataset
from spade_tts.distill.hooks import Capture
from spade_tts.distill.fused import _attention_probs
from spade_tts.distill.losses import DistillLoss, LossWeights, attention_map_loss, kd_loss
from spade_tts.distill.matching import dynamic_matching, layer_matching, read_pruning_record, static_matching
from spade_tts.distill.trainer import DistillConfig, distill, latest_checkpoint, load_models

VOCAB = 64
ROOT = Path(__file__).resolve().parent.parent
TERMS = ("logits", "latents", "attn", "emb")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each in-process run starts from a clean one.

    One thread: these models are tiny, and on a shared 2-core machine more threads only contend.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def _teacher_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger than the default 0.02 init, so that the distributions differ visibly
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(teacher folder, student folder kept [0, 2], dataset folder)."""
    from spade_tts.pruning.layers import model_fingerprint
    from spade_tts.pruning.prune import PruneConfig, prune_checkpoint

    root = tmp_path_factory.mktemp("distill")
    teacher = _teacher_model()
    teacher.save_pretrained(root / "teacher")
    (root / "teacher" / "spade_vocab.json").write_text("{}")  # a side file that must travel to the outputs
    scores = {"format": "spade-scores/1", "num_layers": 4, "model_fingerprint": model_fingerprint(teacher),
              "layers": [{"layer": i, "wli": w} for i, w in enumerate([0.9, 0.1, 0.8, 0.2])]}
    (root / "scores.json").write_text(json.dumps(scores))
    prune_checkpoint(PruneConfig(model=str(root / "teacher"), scores=str(root / "scores.json"),
                                 out=str(root / "student"), keep=2, metric="wli"))
    rng = np.random.default_rng(0)
    rows = {"input_ids": [], "loss_from": []}
    for _ in range(24):
        n = int(rng.integers(12, 21))
        rows["input_ids"].append([1] + rng.integers(3, VOCAB, n - 1).tolist())
        rows["loss_from"].append(int(rng.integers(3, 7)))
    write_token_dataset(rows, root / "data", {"pad_id": 0, "vocab_size": VOCAB}, shard_rows=10)
    return root / "teacher", root / "student", root / "data"


def _cfg(tiny, out, **kw) -> DistillConfig:
    teacher, student, data = tiny
    base = dict(teacher=str(teacher), student=str(student), dataset=str(data), data_fraction=1.0, out_dir=str(out),
                steps=6, lr=3e-3, warmup=2, batch_size=4, grad_accum=1, save_every=2, log_every=1, device="cpu")
    base.update(kw)
    return DistillConfig(**base)


def _batch(tiny, step=0, batch_size=4):
    return TokenDataset(tiny[2]).micro_batch(step, 0, 0, 1, 1, batch_size)


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


# ---------------------------------------------------------------------------------------------- matching

def test_matching_dynamic_and_static_examples():
    # Paper-style: 8 teacher layers, keep 0, 2, 5, 7 -> each copy also covers the removed layers after it.
    assert dynamic_matching([0, 2, 5, 7], 8) == [1, 4, 6, 7]
    assert static_matching([0, 2, 5, 7], 8) == [0, 2, 5, 7]
    # first layer removed: student 0 (= teacher 1) still covers up to the next kept layer
    assert dynamic_matching([1, 3], 4) == [2, 3]
    # last layer removed: the last student layer is matched to the last teacher layer anyway
    assert dynamic_matching([0, 1], 4) == [0, 3]
    assert dynamic_matching([0, 2], 4) == [1, 3]
    # nothing removed: dynamic = static = identity
    assert dynamic_matching([0, 1, 2, 3], 4) == static_matching([0, 1, 2, 3], 4) == [0, 1, 2, 3]
    # the built-in shape: 12 -> 6, keeping the first and last layers
    assert dynamic_matching([0, 1, 4, 6, 9, 11], 12) == [0, 3, 5, 8, 10, 11]
    with pytest.raises(ValueError, match="not one of"):
        layer_matching([0, 1], 4, "adaptive")
    with pytest.raises(ValueError, match="increasing"):
        dynamic_matching([2, 1], 4)
    with pytest.raises(ValueError, match="0..3"):
        dynamic_matching([0, 4], 4)


def test_matching_reads_the_pruning_record(tiny):
    record = read_pruning_record(tiny[1])
    assert record["kept"] == [0, 2] and record["teacher_layers"] == 4
    assert layer_matching(record["kept"], record["teacher_layers"], "dynamic") == [1, 3]


# ---------------------------------------------------------------------------------------------- loss terms

def test_kd_skew_kl_reduces_to_kl_and_matches_hand_computation():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    assert torch.allclose(kd_loss(s, t, "skew_forward", beta=0.0), kd_loss(s, t, "forward"), atol=1e-7)
    assert torch.allclose(kd_loss(s, t, "skew_reverse", beta=0.0), kd_loss(s, t, "reverse"), atol=1e-7)
    T, b = 2.0, 0.1
    p, q = torch.softmax(t.double() / T, -1), torch.softmax(s.double() / T, -1)
    hand_skf = (p * (p / (b * p + (1 - b) * q)).log()).sum(-1).mean() * T ** 2
    hand_skr = (q * (q / (b * q + (1 - b) * p)).log()).sum(-1).mean() * T ** 2
    hand_kl = (p * (p / q).log()).sum(-1).mean() * T ** 2
    assert abs(kd_loss(s, t, "skew_forward", T, b).item() - hand_skf.item()) < 1e-5
    assert abs(kd_loss(s, t, "skew_reverse", T, b).item() - hand_skr.item()) < 1e-5
    assert abs(kd_loss(s, t, "forward", T).item() - hand_kl.item()) < 1e-5
    # half precision inputs, large logits: computed in float32, finite
    big = kd_loss((s * 1e3).half(), (t * 1e3).half(), "skew_forward")
    assert torch.isfinite(big) and big.dtype == torch.float32
    with pytest.raises(ValueError, match="not one of"):
        kd_loss(s, t, "js")


def _plain_kd(s, t, kind, T, b):
    """The divergence written out for autograd (the formula the fused term must reproduce)."""
    log_q, log_p = torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1)
    if kind.endswith("forward"):
        m = (b * log_p.exp() + (1 - b) * log_q.exp()).log()
        return (log_p.exp() * (log_p - m)).sum(-1).mean() * T ** 2
    m = (b * log_q.exp() + (1 - b) * log_p.exp()).log()
    return (log_q.exp() * (log_q - m)).sum(-1).mean() * T ** 2


@pytest.mark.parametrize("kind", ["skew_forward", "skew_reverse", "forward", "reverse"])
def test_fused_kd_gradient_equals_autograd_of_the_formula(kind, monkeypatch):
    import spade_tts.distill.fused as fused
    monkeypatch.setattr(fused, "ROWS_PER_SLICE", 7)  # several slices, the last one short
    torch.manual_seed(1)
    s, t = torch.randn(20, 33, dtype=torch.float64) * 3, torch.randn(20, 33, dtype=torch.float64) * 3
    T, b = 1.7, (0.1 if kind.startswith("skew") else 0.0)
    mine_s, ref_s = s.clone().requires_grad_(), s.clone().requires_grad_()
    mine = kd_loss(mine_s, t, kind, T, 0.1)
    ref = _plain_kd(ref_s, t, kind, T, b)
    (2.5 * mine).backward()
    (2.5 * ref).backward()
    assert torch.allclose(mine.double(), ref, atol=1e-5), (mine.item(), ref.item())
    assert torch.allclose(mine_s.grad, ref_s.grad, atol=1e-6, rtol=1e-4)
    assert ref_s.grad.abs().max() > 1e-3  # the comparison is not between two zeros


def test_fused_attention_maps_gradient_equals_autograd_of_the_formula():
    torch.manual_seed(2)
    b, h, n, d = 3, 2, 9, 4
    q_s, k_s, q_t, k_t = (torch.randn(b, h, n, d, dtype=torch.float64) for _ in range(4))
    mask = torch.ones(b, n, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    mask[2, :2] = 0  # left padding: fully masked query rows
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
    mine_q, mine_k = q_s.clone().requires_grad_(), k_s.clone().requires_grad_()
    ref_q, ref_k = q_s.clone().requires_grad_(), k_s.clone().requires_grad_()
    mine = attention_map_loss((mine_q, mine_k), (q_t, k_t), mask, 0.5, 0.7)
    err = (_attention_probs(ref_q, ref_k, 0.5, allowed) - _attention_probs(q_t, k_t, 0.7, allowed)).pow(2).sum(-1)
    m = mask[:, None, :].double()
    ref = (err * m).sum() / (m.sum() * h)
    mine.backward()
    ref.backward()
    assert torch.allclose(mine.double(), ref, atol=1e-6)
    assert torch.allclose(mine_q.grad.double(), ref_q.grad, atol=1e-6)
    assert torch.allclose(mine_k.grad.double(), ref_k.grad, atol=1e-6)
    assert ref_q.grad.abs().max() > 1e-4 and ref_k.grad.abs().max() > 1e-4


def test_every_term_is_zero_for_an_identical_student(tiny):
    teacher = _load(tiny[0])
    student = copy.deepcopy(teacher)
    loss = DistillLoss(teacher, student, [0, 1, 2, 3])
    total, terms = loss(_batch(tiny))
    assert set(terms) == {"ce", *TERMS}
    for name in TERMS:
        assert abs(terms[name].item()) < 1e-6, (name, terms[name].item())
    assert terms["ce"].item() > 0  # CE is the data term, not a distance to the teacher
    loss.close()


def test_terms_positive_and_gradients_reach_only_the_student(tiny):
    teacher, student, _ = load_models(tiny[0], tiny[1], read_pruning_record(tiny[1]), DistillConfig(), "cpu")
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with torch.no_grad():  # a pruned copy starts with the teacher's embeddings: move them, as training would
        student.get_input_embeddings().weight.add_(0.01 * torch.randn_like(student.get_input_embeddings().weight))
    for name in TERMS:  # each term alone: positive, and it trains the student
        student.zero_grad(set_to_none=True)
        w = LossWeights(**{t: (1.0 if t == name else 0.0) for t in ("ce", *TERMS)})
        loss = DistillLoss(teacher, student, [1, 3], w)
        total, terms = loss(_batch(tiny))
        assert set(terms) == {name} and terms[name].item() > 0, (name, terms)
        total.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
        assert all(p.grad is None for p in teacher.parameters())
        loss.close()
    # attention maps reach q/k of every student layer
    loss = DistillLoss(teacher, student, [1, 3], LossWeights(0, 0, 0, 1.0, 0))
    student.zero_grad(set_to_none=True)
    loss(_batch(tiny))[0].backward()
    for layer in student.model.layers:
        assert layer.self_attn.q_proj.weight.grad.abs().sum() > 0
    loss.close()


def test_teacher_is_unchanged_by_training_steps(tiny):
    teacher, student, _ = load_models(tiny[0], tiny[1], read_pruning_record(tiny[1]), DistillConfig(), "cpu")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    loss = DistillLoss(teacher, student, [1, 3])
    for step in range(3):
        opt.zero_grad()
        loss(_batch(tiny, step))[0].backward()
        opt.step()
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    loss.close()


def test_hooked_attention_and_latents_are_the_models_own(tiny):
    """The maps built from hooked q/k equal HF's eager attention; latents are raw layer outputs (pre final norm)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny[0], dtype=torch.float32, attn_implementation="eager").eval()
    batch = _batch(tiny)
    cap = Capture(model, hidden_layers=[3], attn_layers=[1, 3], embeddings=True)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True,
                    output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    n = mask.shape[1]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & mask[:, None, None, :]
    real = mask[:, None, :, None]  # compare rows of real tokens (padded rows are not used by the loss)
    for i in (1, 3):
        mine = _attention_probs(*cap.qk[i], cap.scaling[i], allowed)
        assert torch.allclose(mine * real, out.attentions[i] * real, atol=1e-5)
    assert torch.allclose(cap.embeddings, out.hidden_states[0])
    final_norm = model.model.norm(cap.hidden[3])
    assert torch.allclose(final_norm, out.hidden_states[-1], atol=1e-5)
    assert not torch.allclose(cap.hidden[3], out.hidden_states[-1], atol=1e-3)
    cap.remove()


# ---------------------------------------------------------------------------------------------- data

def _fake_token_store(path: Path, speakers=4, per_speaker=25, num_speech=16):
    """A TokenStore folder with random codes and phone timings: the layout `prepare_tokens` writes."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    codes, phones, frames, items = [], [], [], []
    for s in range(speakers):
        for u in range(per_speaker + 3):
            n_ph = int(rng.integers(2, 5))
            fr = rng.integers(1, 4, n_ph)
            codes.append(rng.integers(0, num_speech, int(fr.sum())).astype(np.int16))
            phones.append(rng.integers(6, 48, n_ph).astype(np.int16))
            frames.append(fr.astype(np.int16))
            split = "train" if u < per_speaker else "heldout"
            items.append({"id": f"spk{s}-{u}", "speaker": f"spk{s}", "split": split, "text": "x",
                          "seconds": float(fr.sum()) / 10})
    arrays = {}
    for name, parts in (("codes", codes), ("phones", phones), ("frames", frames)):
        arrays[name] = np.concatenate(parts)
        arrays[f"{name}_offsets"] = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
    path.mkdir(parents=True)
    save_file(arrays, str(path / "tokens.safetensors"))
    (path / "index.json").write_text(json.dumps({"num_speech": num_speech, "tokens_per_second": 10.0,
                                                 "items": items}))
    return items


def test_data_fraction_subset_is_fixed_by_seed_and_sized(tmp_path):
    items = _fake_token_store(tmp_path / "tokens")
    build = lambda seed, frac=0.2: build_reference_dataset(tmp_path / "tokens", tmp_path / "out", frac, seed)
    a = build(0)
    meta = json.loads((a / ddata.META_FILE).read_text())
    assert meta["utterances_total"] == 100 and meta["utterances_used"] == 20  # 20 % of the training utterances
    assert abs(meta["percent_utterances"] - 20.0) < 1e-9 and 0 < meta["percent_hours"] < 100
    chosen0 = builtin_data.select_utterances(items, 0.2, 0)
    assert meta["seconds_used"] == pytest.approx(sum(items[i]["seconds"] for i in chosen0))
    assert meta["seconds_total"] == pytest.approx(sum(it["seconds"] for it in items if it["split"] == "train"))
    mtime = (a / ddata.META_FILE).stat().st_mtime_ns
    assert build(0) == a and (a / ddata.META_FILE).stat().st_mtime_ns == mtime  # built once, reused
    assert chosen0 == builtin_data.select_utterances(items, 0.2, 0) != builtin_data.select_utterances(items, 0.2, 1)
    assert all(items[i]["split"] == "train" for i in chosen0)
    b = build(1)
    assert b != a
    from datasets import load_from_disk

    used = {i["id"] for i in (items[j] for j in chosen0)}
    got = load_from_disk(str(a))
    assert set(got["target"]) <= used and set(got["prompt"]) <= used  # prompts too come from the subset
    assert len(got) == 2 * meta["targets"]  # pairs_per_target = 2
    assert not list((tmp_path / "out").glob(".*tmp*"))  # nothing half-written left behind


def test_distillation_labels_the_prompt_speech_only_for_a_teacher_trained_on_it(tmp_path):
    """The shipped teacher learned no distribution over the prompt's speech (prompt_loss false): teaching the student
    there would spend its capacity on what the teacher never knew. Attempt 1's folder (no key) did learn it."""
    from types import SimpleNamespace

    from datasets import load_from_disk

    from spade_tts.families.builtin import BuiltinSpeechLM

    _fake_token_store(tmp_path / "tokens")
    target_only = load_from_disk(str(build_reference_dataset(tmp_path / "tokens", tmp_path / "out", 0.2, 0)))
    with_prompt = load_from_disk(str(build_reference_dataset(tmp_path / "tokens", tmp_path / "out", 0.2, 0,
                                                             prompt_loss=True)))
    assert target_only["input_ids"] == with_prompt["input_ids"]  # the same sequences, labelled from elsewhere
    assert all(a > b for a, b in zip(target_only["loss_from"], with_prompt["loss_from"]))
    folder = tmp_path / "teacher"
    folder.mkdir()
    asks = lambda: BuiltinSpeechLM.trained_on_prompt_speech(SimpleNamespace(path=folder))
    assert asks() is False  # no training record: the prompt is context
    (folder / "spade_train_config.json").write_text(json.dumps({"prompt_loss": False}))
    assert asks() is False
    (folder / "spade_train_config.json").write_text(json.dumps({"lr": 1e-3}))  # attempt 1's, before the key
    assert asks() is True


def test_builtin_teacher_refuses_tokens_of_another_tokenizer(tmp_path):
    """Distilling the built-in model from tokens another tokenizer made would train on codes that mean nothing to
    it: a one-line error naming the fix, and no dataset written."""
    from spade_tts.families.registry import load_speech_lm

    _fake_token_store(tmp_path / "tokens", num_speech=16)
    cfg = DistillConfig(tokens_dir=str(tmp_path / "tokens"), data_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="16-code speech tokens but the teacher reads 15360.*reference-cpu.yaml"):
        load_speech_lm(None).distill_data(cfg)
    assert not (tmp_path / "out").exists()


def test_read_order_splits_one_global_batch_over_processes_and_micro_batches(tiny):
    data = TokenDataset(tiny[2], seed=3)
    one = [data.micro_batch(5, m, 0, 1, 4, 2)["input_ids"] for m in range(4)]
    two = [data.micro_batch(5, m, r, 2, 2, 2)["input_ids"] for m in range(2) for r in range(2)]
    four = [data.micro_batch(5, 0, r, 4, 1, 2)["input_ids"] for r in range(4)]
    flat = lambda xs: sorted(tuple(row.tolist()) for x in xs for row in x)
    assert flat(one) == flat(two) == flat(four)
    rows = [data.row_at(p) for p in range(len(data))]
    assert sorted(rows) == list(range(len(data)))  # every row once per epoch


# ---------------------------------------------------------------------------------------------- config errors

def test_bad_config_fails_with_one_clear_line(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="student folder .* not found"):
        distill(_cfg(tiny, tmp_path / "o", student=str(tmp_path / "nope")))
    bare = tmp_path / "bare"
    _load(tiny[1]).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="spade_pruning.json not found"):
        distill(_cfg(tiny, tmp_path / "o", student=str(bare)))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"data_fraction=.* must be in \(0, 1\]"):
            distill(_cfg(tiny, tmp_path / "o", data_fraction=bad))
    with pytest.raises(ValueError, match="matching='adaptive' is not one of"):
        distill(_cfg(tiny, tmp_path / "o", matching="adaptive"))
    other = tmp_path / "other_teacher"
    _teacher_model(seed=1).save_pretrained(other)
    with pytest.raises(ValueError, match="pruned from another model"):
        distill(_cfg(tiny, tmp_path / "o", teacher=str(other)))
    from spade_tts.cli import main

    assert main(["distill", f"student={tmp_path / 'nope'}"]) == 2  # the CLI prints one line, exits 2


def test_recipe_loads_with_the_papers_weights():
    from spade_tts.config import load_config

    cfg = load_config(DistillConfig, ROOT / "recipes" / "distill.yaml", ["mixed_precision=no", "student=x"])
    assert cfg.data_fraction == 0.05 and cfg.matching == "dynamic" and cfg.kd == "skew_forward"
    assert cfg.w_ce == 0.25 and cfg.w_logits == cfg.w_latents == cfg.w_attn == cfg.w_emb == 0.75 / 4
    assert cfg.mixed_precision is False  # YAML's `no`; the trainer reads it as "no"


# ---------------------------------------------------------------------------------------------- training runs

def test_run_lowers_the_loss_and_exports_a_loadable_checkpoint(tiny, tmp_path):
    out = tmp_path / "run"
    batch = _batch(tiny, step=0, batch_size=8)

    def loss_of(student_dir) -> float:
        loss = DistillLoss(_load(tiny[0]), _load(student_dir), [1, 3])
        with torch.no_grad():
            value = loss(batch)[0].item()
        loss.close()
        return value

    final = distill(_cfg(tiny, out, steps=12, lr=1e-2))
    assert loss_of(final) < 0.8 * loss_of(tiny[1])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert all({"loss", "ce", *TERMS, "lr", "grad_norm"} <= set(r) for r in log)
    for name in ("spade_vocab.json", "spade_pruning.json", "spade_distill.json", "config.json"):
        assert (final / name).is_file(), name
    assert json.loads((final / "spade_distill.json").read_text())["match"] == [1, 3]
    assert "lm_head.weight" not in _weights(final)  # tied head and embeddings saved once, as in the student
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000010", "step-00000012"]
    code = ("import sys, torch; from transformers import AutoModelForCausalLM;"
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]);"
            "assert m.config.num_hidden_layers == 2;"
            "g = m.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=5, do_sample=False, pad_token_id=0);"
            "print(g.shape[1])")
    res = subprocess.run([sys.executable, "-c", code, str(final)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "8"


def test_time_budget_stops_at_a_low_lr_checkpoints_and_exports(tiny, tmp_path):
    from spade_tts.schedule import warmup_cosine

    assert warmup_cosine(0, 2, 100, 0.1) == 0.5 and warmup_cosine(2, 2, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 2, 100, 0.1, time_progress=1.0) == pytest.approx(0.1)  # time ran out first
    assert warmup_cosine(99, 2, 100, 0.1, time_progress=0.2) == pytest.approx(warmup_cosine(99, 2, 100, 0.1))

    out = tmp_path / "budget"
    final = distill(_cfg(tiny, out, steps=50, time_budget_minutes=1e-4))  # 6 ms: over after the first step
    summary = json.loads((final / "spade_distill.json").read_text())
    assert summary["stopped_by"] == "time_budget" and summary["steps"] == 1 and summary["planned_steps"] == 50
    assert latest_checkpoint(out).name == "step-00000001"
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True), GradientState._reset_state(), PartialState._reset_state()
    again = distill(_cfg(tiny, out, steps=50, time_budget_minutes=1e-4))  # the budget is spent: nothing more
    assert json.loads((again / "spade_distill.json").read_text())["steps"] == 1
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1]


def test_heldout_loss_keeps_the_best_student(tiny, tmp_path):
    out = tmp_path / "eval"
    with pytest.raises(ValueError, match="eval_every needs held-out sequences"):
        distill(_cfg(tiny, out, eval_every=2))  # the whole dataset trains: nothing is held out
    final = distill(_cfg(tiny, out, steps=6, lr=3e-2, data_fraction=0.5, eval_every=2, eval_sequences=8))
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["heldout_ce"] for r in log if "heldout_ce" in r}
    assert sorted(evals) == [2, 4, 6]
    best_step = min(evals, key=evals.get)
    summary = json.loads((final / "spade_distill.json").read_text())
    assert summary["best"] == {"step": best_step, "heldout_ce": evals[best_step]}
    assert summary["heldout"]["rows_used"] + summary["data"]["rows_used"] == summary["data"]["rows"]
    kept = json.loads((out / "best" / "spade_distill.json").read_text())
    assert kept["steps"] == best_step and kept["stopped_by"] is None  # a mid-run pick, not where the run stopped
    # the saved best student reproduces its held-out loss
    from spade_tts.distill.data import TokenDataset

    rows = TokenDataset(tiny[2], seed=0, fraction=0.5, complement=True)
    model, total, count = _load(out / "best"), 0.0, 0
    with torch.no_grad():
        for batch in rows.first_batches(4, 8):
            logits, labels = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
            total += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                             labels[:, 1:].reshape(-1), reduction="sum"))
            count += int((labels[:, 1:] != -100).sum())
    assert total / count == pytest.approx(evals[best_step], rel=1e-4)


class Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_result(tiny, tmp_path):
    straight = distill(_cfg(tiny, tmp_path / "a"))

    def kill_after_3(step, rec):
        if step == 3:  # step 3 is done but its checkpoint is not (save_every=2): resume redoes it from step 2
            raise Killed

    with pytest.raises(Killed):
        distill(_cfg(tiny, tmp_path / "b"), on_step=kill_after_3)
    assert latest_checkpoint(tmp_path / "b").name == "step-00000002"
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True), GradientState._reset_state(), PartialState._reset_state()
    resumed = distill(_cfg(tiny, tmp_path / "b"))
    wa, wb = _weights(straight), _weights(resumed)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    log_a = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == list(range(1, 7))  # the lost step 3 is logged once, not twice
    assert log_b[-1]["loss"] == pytest.approx(log_a[-1]["loss"], rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process_with_double_accumulation(tiny, tmp_path):
    single = distill(_cfg(tiny, tmp_path / "one", steps=3, batch_size=2, grad_accum=2, save_every=3))
    # `accelerate launch --multi_gpu` starts N local processes; with no GPU the trainer joins them in a gloo
    # group (`--cpu --num_processes 2` would start only one: accelerate's CPU path expects MPI).
    args = [f"{k}={v}" for k, v in vars(_cfg(tiny, tmp_path / "two", steps=3, batch_size=2, grad_accum=1,
                                              save_every=3)).items() if v != ""]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "spade_tts.distill", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    double = tmp_path / "two" / "final"
    state = json.loads((latest_checkpoint(tmp_path / "two") / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["global_batch"] == 4
    wa, wb = _weights(single), _weights(double)
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=2e-5) for k in wa), max(
        (wa[k] - wb[k]).abs().max().item() for k in wa)
    la = json.loads((tmp_path / "one" / "train_log.jsonl").read_text().splitlines()[-1])
    lb = json.loads((tmp_path / "two" / "train_log.jsonl").read_text().splitlines()[-1])
    assert lb["loss"] == pytest.approx(la["loss"], rel=1e-4)


def test_nan_loss_stops_clearly_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    real_call = DistillLoss.__call__
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        total, terms = real_call(self, batch)
        if calls["n"] == 5:  # the 5th optimizer step
            terms["latents"] = terms["latents"] * float("nan")
            total = total + terms["latents"]
        return total, terms

    monkeypatch.setattr(DistillLoss, "__call__", poisoned)
    with pytest.raises(RuntimeError) as err:
        distill(_cfg(tiny, out))
    msg = str(err.value)
    assert "\n" not in msg and "at step 5" in msg and "lower lr=" in msg and "step-00000004" in msg, msg
    ckpt = latest_checkpoint(out)
    assert ckpt.name == "step-00000004" and not (out / "final").exists()
    assert all(torch.isfinite(v).all() for v in _weights(ckpt).values())
    monkeypatch.setattr(DistillLoss, "__call__", real_call)
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True), GradientState._reset_state(), PartialState._reset_state()
    final = distill(_cfg(tiny, out))  # the kept checkpoint resumes
    assert (final / "model.safetensors").is_file()


def test_exploding_learning_rate_stops_with_the_message(tiny, tmp_path):
    with pytest.raises(RuntimeError, match=r"became (nan|inf).* at step \d+ .*lower lr= \(now 1e\+30\)"):
        distill(_cfg(tiny, tmp_path / "boom", lr=1e30, warmup=0, steps=6, save_every=1))
