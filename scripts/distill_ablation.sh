#!/usr/bin/env bash
# Issue 18's loss ablation on the built-in model's WLI half-depth student, on this CPU: the recipe of
# scripts/distill_cuts.sh (recipes/distill-cpu.yaml, same data, same steps) with one change per run, then one
# `spade eval` of the teacher, the recipe's student and every variant on the same items.
# Resumable like distill_cuts.sh: rerun the same command after a stop.
#   STEPS=120 ITEMS=8 CUTS=runs/cuts120 bash scripts/distill_ablation.sh
# CUTS: the folder of a distill_cuts.sh run (its pruned-wli is the student, its distill-wli the recipe's run).
# VARIANTS: which runs (default: all five below). Results: $RUN/eval/eval.json and the table it prints.
set -euo pipefail
CUTS=${CUTS:-runs/cuts120}
RUN=${RUN:-$CUTS/ablation}
STEPS=${STEPS:-120}           # the same number of steps as the recipe's run in $CUTS
ITEMS=${ITEMS:-8}             # held-out items per voice for the evaluation
VARIANTS=${VARIANTS:-ce_only logits_only static no_attn no_emb}
[ -f "$CUTS/distill-wli/best/config.json" ] || { echo "no $CUTS/distill-wli/best: run scripts/distill_cuts.sh first" >&2; exit 2; }
change() {  # the override(s) that make each variant; the recipe's other terms keep their weights
  case "$1" in
    ce_only) echo "w_ce=1 w_logits=0 w_latents=0 w_attn=0 w_emb=0" ;;
    logits_only) echo "w_ce=0 w_logits=1 w_latents=0 w_attn=0 w_emb=0" ;;
    static) echo "matching=static" ;;
    no_attn) echo "w_attn=0" ;;
    no_emb) echo "w_emb=0" ;;
    *) echo "unknown variant $1 (ce_only logits_only static no_attn no_emb)" >&2; exit 2 ;;
  esac
}
models=("full=built-in" "recipe=$CUTS/distill-wli/best")
for v in $VARIANTS; do
  read -r -a overrides <<< "$(change "$v")"
  [ -f "$RUN/$v/final/config.json" ] || spade distill --recipe recipes/distill-cpu.yaml student="$CUTS/pruned-wli" \
      out_dir="$RUN/$v" steps="$STEPS" time_budget_minutes=0 "${overrides[@]}"
  models+=("$v=$RUN/$v/best")
done
spade eval --models "${models[@]}" items_per_speaker="$ITEMS" out_dir="$RUN/eval" json="$RUN/eval/eval.json"
