#!/usr/bin/env bash
# The checks that need a GPU, as one prepared run on a lent machine (torch + transformers preinstalled
# there; the few packages it lacks travel as wheels in .whl: pip download them for Python 3.12, see
# /work/.library/device/README.md; datasets dill multiprocess soundfile soxr cffi pycparser librosa audioread
# decorator pooch platformdirs).
#   bash scripts/device_check.sh decode    # CUDA tests + decode benchmarks (LLaSA-1B and CosyVoice 2 LM shapes)
#   bash scripts/device_check.sh rows      # only the rows the last GPU run lacked (~4 min): CosyVoice 2 LM at 24 and 12
#                                          layers with fused projections, peak memory of LLaSA-1B at 16 and 8 layers
#   bash scripts/device_check.sh distill   # the distillation recipe (all terms, bf16) on a time budget
#                                          (BUDGET_MINUTES, and DISTILL_ARGS="key=value ..." for more overrides)
#   bash scripts/device_check.sh reference # `spade train-reference` (RECIPE, default recipes/reference.yaml; BUDGET_MINUTES,
#                                          REF_ARGS="key=value ..."); needs data/reference_tokens and data/codec carried;
#                                          brings back best/ (the held-out minimum) and export/ (the last step)
# Several modes run one after the other: `bash scripts/device_check.sh rows reference`.
# Everything it measures lands in $OUT (JSON, logs, the distilled student in <=15 MB pieces:
# reassemble with `cat distill_final.tar.part-* | tar x`: final/ and best/, the held-out minimum).
# The distill mode needs, carried: .whl runs/pruned data/distill/reference-f0.05-s0-f64305ec and
# data/distill/reference-heldout-f0.2-s0-a5bcb14a, made here by
#   python3 -c "from spade_tts.reference.distill_data import build_reference_dataset as b; \
#     print(b('data/reference_tokens', 'data/distill', 0.2, 0, 1, 4.0, 7.5, split='heldout'))"
# (20 % of the held-out utterances: with the tracked tree, all of it stays under the 64 MiB transfer limit).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$OUT/machine.txt"

bench() {  # name, then decode_speed.py arguments
  local name=$1; shift
  timeout "${BENCH_TIMEOUT:-240}" python3 benchmarks/decode_speed.py --device cuda --dtype bf16 --repeats 2 \
    --json "$OUT/$name.json" "$@" 2>&1 | grep -v -E "Warning|warn\(" | tee -a "$OUT/decode.log"
}

run_mode() {
case "$1" in
decode)
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_decoding_cuda.py 2>&1 | tail -15 | tee "$OUT/pytest_cuda.log"
  # --fuse: the compiled method also fuses q/k/v and gate/up (docs/decoding.md); peak memory and LM-only RTF per row
  G=hf_generate,static_graphs_full,static_graphs,static_graphs_fused
  bench gpu_llasa1b_16 --shape llasa-1b --methods $G --compile --fuse --compile-batches 1
  bench gpu_llasa1b_8 --shape llasa-1b --layers 8 --batches 1 --methods hf_generate,static_graphs,static_graphs_fused \
    --compile --fuse
  bench gpu_cosyvoice2_24 --shape cosyvoice2-lm --methods hf_generate,static_graphs,static_graphs_fused --compile --fuse \
    --compile-batches 1
  bench gpu_cosyvoice2_12 --shape cosyvoice2-lm --layers 12 --batches 1 --methods static_graphs,static_graphs_fused \
    --compile --fuse
  ;;
rows)
  bench gpu_cosyvoice2_24 --shape cosyvoice2-lm --batches 1 --methods static_graphs,static_graphs_fused --compile --fuse
  bench gpu_cosyvoice2_12 --shape cosyvoice2-lm --layers 12 --batches 1 --methods static_graphs,static_graphs_fused \
    --compile --fuse
  bench gpu_llasa1b_16_mem --shape llasa-1b --batches 1,8 --methods static_graphs_full,static_graphs
  bench gpu_llasa1b_8_mem --shape llasa-1b --layers 8 --batches 1,8 --methods static_graphs
  ;;
distill)
  python3 -m spade_tts.cli distill --recipe recipes/distill.yaml student=runs/pruned \
    dataset=data/distill/reference-f0.05-s0-f64305ec data_fraction=1.0 out_dir=/tmp/distill mixed_precision=bf16 \
    heldout_dataset=data/distill/reference-heldout-f0.2-s0-a5bcb14a \
    time_budget_minutes="${BUDGET_MINUTES:-3}" save_every=500 log_every=10 ${DISTILL_ARGS:-} 2>&1 | tr '\r' '\n' | grep -v '%|' \
    | tee "$OUT/distill.log"
  cp /tmp/distill/train_log.jsonl "$OUT/distill_train_log.jsonl"
  tar cf - -C /tmp/distill final best | split -b 15m - "$OUT/distill_final.tar.part-"
  ;;
reference)
  python3 -m spade_tts.cli train-reference --recipe "${RECIPE:-recipes/reference.yaml}" out_dir=/tmp/ref \
    loader_workers=6 time_budget_minutes="${BUDGET_MINUTES:-6.5}" ${REF_ARGS:-} 2>&1 | tr '\r' '\n' | grep -v '%|' \
    | tee "$OUT/reference.log"
  cp /tmp/ref/train_log.jsonl /tmp/ref/best.json "$OUT/"
  tar cf - -C /tmp/ref --exclude=codec.safetensors best export | split -b 15m - "$OUT/reference.tar.part-"
  ;;
*) echo "usage: $0 decode|rows|distill|reference ..." >&2; exit 2 ;;
esac
}
for mode in "${@:-decode}"; do run_mode "$mode"; done
ls -la "$OUT"
