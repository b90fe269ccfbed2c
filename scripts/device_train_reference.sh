#!/usr/bin/env bash
# Trains the reference LM on a lent GPU machine (torch + transformers preinstalled there) from the
# token files made here by `spade train-reference` (data/reference_tokens) and brings the export
# back under $OUT in <=15 MB pieces (the transfer limit): reassemble with `cat export.tar.part-* | tar x`.
set -euo pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
export PYTHONUNBUFFERED=1
python3 -m spade_tts.cli train-reference --recipe recipes/reference.yaml out_dir=/tmp/ref loader_workers=6 \
  time_budget_minutes="${BUDGET_MINUTES:-6.5}" 2>&1 | tr '\r' '\n' | grep -v '%|' || true
cp /tmp/ref/train_log.jsonl "$OUT/"
tar cf - -C /tmp/ref --exclude=codec.safetensors export | split -b 15m - "$OUT/export.tar.part-"
ls -la "$OUT"
