"""Seconds per distillation step of the built-in model's half-depth student, term by term, on this machine.

    python3 benchmarks/distill_step.py                       # batch 16, the CPU recipe's sequences
    python3 benchmarks/distill_step.py --student runs/pruned --batch-size 8

For the two large terms (logit KD over the vocabulary, attention maps) it times, in the same run and on
the same batch, the formula written out for autograd (how the terms were computed before
`spade_tts/distill/fused.py`) against the fused term that computes its gradient a slice at a time; then a
whole step (teacher forward, student forward and backward) with each set of loss terms. Prints a table
and writes JSON; compare ratios only within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def plain_kd(s, t, beta: float = 0.1):
    """Skew forward KL written for autograd (the formula of spade_tts.distill.losses)."""
    import torch

    log_q, log_p = torch.log_softmax(s.float(), -1), torch.log_softmax(t.float(), -1)
    log_m = torch.logaddexp(log_p + torch.tensor(beta).log(), log_q + torch.tensor(1 - beta).log())
    return (log_p.exp() * (log_p - log_m)).sum(-1).mean()


def plain_attention(q_s, k_s, q_t, k_t, mask):
    """The attention-map term written for autograd, under activation checkpointing as it was."""
    import torch
    from torch.utils.checkpoint import checkpoint

    from spade_tts.distill.fused import _attention_probs

    n = mask.shape[1]
    keys = mask.bool()
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & keys[:, None, None, :]

    def term(q_s, k_s):
        scale = q_s.shape[-1] ** -0.5
        p_s = _attention_probs(q_s, k_s, scale, allowed)
        with torch.no_grad():
            p_t = _attention_probs(q_t, k_t, scale, allowed)
        err = (p_s - p_t).pow(2).sum(-1)
        m = keys[:, None, :].to(err.dtype)
        return (err * m).sum() / (m.sum() * err.shape[1])

    return checkpoint(term, q_s, k_s, use_reentrant=False)


def timed(fn, runs: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="runs/pruned", help="a folder written by `spade prune` from the built-in model")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "distill_step_cpu.json"))
    args = ap.parse_args()

    import torch

    from decode_speed import cpu_model
    from spade_tts.distill.losses import DistillLoss, LossWeights, attention_map_loss, kd_loss
    from spade_tts.distill.matching import layer_matching
    from spade_tts.distill.trainer import (DistillConfig, check_config, load_models, open_dataset, vocab_size)
    from spade_tts.io import write_json

    cfg = DistillConfig(student=args.student, batch_size=args.batch_size, pairs_per_target=4)
    teacher_dir, student_dir, record = check_config(cfg)
    teacher, student, speech = load_models(teacher_dir, student_dir, record, cfg, torch.device("cpu"))
    batch = open_dataset(cfg, speech, vocab_size(student)).micro_batch(0, 0, 0, 1, 1, args.batch_size)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    match = layer_matching(record["kept"], int(record["teacher_layers"]), "dynamic")
    pick = labels[:, 1:] != -100
    with torch.no_grad():
        t_rows = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1][pick]
        s_rows = student(input_ids=ids, attention_mask=mask).logits[:, :-1][pick]
    heads, dim = teacher.config.num_attention_heads, teacher.config.head_dim
    q_s, k_s, q_t, k_t = (torch.randn(ids.shape[0], heads, ids.shape[1], dim) for _ in range(4))

    def backward_of(loss_fn, *inputs):
        leaves = [x.clone().requires_grad_() for x in inputs]
        return lambda: loss_fn(*leaves).backward()

    rows = []
    for term, plain, fused in [
        ("logit KD (skew forward)", backward_of(lambda s: plain_kd(s, t_rows), s_rows),
         backward_of(lambda s: kd_loss(s, t_rows), s_rows)),
        ("attention maps, one layer", backward_of(lambda q, k: plain_attention(q, k, q_t, k_t, mask), q_s, k_s),
         backward_of(lambda q, k: attention_map_loss((q, k), (q_t, k_t), mask, dim ** -0.5, dim ** -0.5), q_s, k_s)),
    ]:
        a, b = timed(plain, args.runs), timed(fused, args.runs)
        rows.append({"what": f"{term}: forward + backward", "autograd_s": round(a, 3), "fused_s": round(b, 3),
                     "speedup": round(a / b, 2)})
    steps = []
    for name, weights in [("CE only", LossWeights(1, 0, 0, 0, 0)), ("CE + logits", LossWeights(0.25, 0.1875, 0, 0, 0)),
                          ("all but attention maps", LossWeights(0.25, 0.1875, 0.1875, 0, 0.1875)),
                          ("all five (paper weights)", LossWeights())]:
        loss = DistillLoss(teacher, student, match, weights)

        def step():
            loss(batch)[0].backward()
            student.zero_grad(set_to_none=True)

        steps.append({"terms": name, "step_s": round(timed(step, args.runs), 3)})
        loss.close()

    machine = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "load_average": list(os.getloadavg())}
    shape = {"batch": list(ids.shape), "real_tokens": int(mask.sum()), "labelled_rows": int(pick.sum()),
             "vocab": int(t_rows.shape[-1]), "heads": heads, "student_layers": len(record["kept"])}
    print(f"# {machine['cpu']}, {machine['cpu_count']} CPUs, torch {torch.__version__} "
          f"({machine['torch_threads']} threads); batch {shape['batch']}, {shape['labelled_rows']} labelled rows")
    print(f"{'term':44} {'autograd s':>10} {'fused s':>8} {'speed-up':>8}")
    for r in rows:
        print(f"{r['what']:44} {r['autograd_s']:>10.3f} {r['fused_s']:>8.3f} {r['speedup']:>7.2f}x")
    print(f"\n{'whole step (fused terms)':44} {'s/step':>10}")
    for s in steps:
        print(f"{s['terms']:44} {s['step_s']:>10.3f}")
    write_json(Path(args.json), {"machine": machine, "shape": shape, "student": str(student_dir),
                                 "terms": rows, "steps": steps})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
