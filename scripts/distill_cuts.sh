#!/usr/bin/env bash
# Issue 18's comparison on the built-in model, on this CPU: the half-depth cut by each metric, each distilled
# with the same recipe, data and time budget (or steps), then one `spade eval` of all of them on the same items.
# Every step is resumable or skipped when done, so rerun the same command after a stop.
#   bash scripts/distill_cuts.sh                      # WLI, block influence, tf-loss rise, first six
#   METRICS="wli first" BUDGET=20 ITEMS=8 bash scripts/distill_cuts.sh
#   STEPS=120 ITEMS=8 bash scripts/distill_cuts.sh    # a fixed number of steps: docs/distillation.md's table,
#                                                     # 1 h 30 min on 2 CPU cores (4 x 14 min + 25 min of eval)
# SCORES: a `spade score compare=true` scores.json (default: the 56-item one at temperature 0.7, made by
#   `spade score items_per_speaker=8 compare=true -o runs/score56-t07`).
# RUN: the folder everything goes to. Results: $RUN/eval/eval.json and the table it prints.
set -euo pipefail
SCORES=${SCORES:-runs/score56-t07/scores.json}
RUN=${RUN:-runs/cuts}
METRICS=${METRICS:-wli block_influence tf_loss_rise first}
BUDGET=${BUDGET:-30}          # minutes of distillation per cut (recipes/distill-cpu.yaml's)
ITEMS=${ITEMS:-15}            # held-out items per voice for the evaluation (15: the 105-item set)
STEPS=${STEPS:-}              # when set: this many steps per cut, whatever the machine's speed (no time budget)
length=("time_budget_minutes=$BUDGET")
[ -z "$STEPS" ] || length=("steps=$STEPS" "time_budget_minutes=0")
[ -f "$SCORES" ] || { echo "no $SCORES: run spade score items_per_speaker=8 compare=true first" >&2; exit 2; }
models=("full=built-in")
for m in $METRICS; do
  [ -f "$RUN/pruned-$m/spade_pruning.json" ] || spade prune --scores "$SCORES" --ratio 0.5 metric="$m" -o "$RUN/pruned-$m"
  [ -f "$RUN/distill-$m/final/config.json" ] || spade distill --recipe recipes/distill-cpu.yaml \
      student="$RUN/pruned-$m" out_dir="$RUN/distill-$m" "${length[@]}"
  models+=("pruned_$m=$RUN/pruned-$m" "distilled_$m=$RUN/distill-$m/best")
done
spade eval --models "${models[@]}" items_per_speaker="$ITEMS" out_dir="$RUN/eval" json="$RUN/eval/eval.json"
