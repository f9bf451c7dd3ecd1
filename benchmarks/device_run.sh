#!/usr/bin/env bash
# One GPU session's checks and benchmarks, run in the repository root of a GPU machine that has torch but not
# this project's other Python packages (the device tool's image; see BENCHMARKS.md for the wheel preparation).
# Usage: OUT=<folder> bash benchmarks/device_run.sh     (each step has its own time cap; logs go to $OUT)
set -u
OUT=${OUT:-device_out}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{ date -u; nvidia-smi -L; python3 -c "import torch, transformers, nnsight; print(torch.__version__, transformers.__version__, nnsight.__version__)"; } \
  2>&1 | tee "$OUT/gpu_tests.log"
step() {  # step SECONDS LOG CMD...: run with a cap, keep the log, print its tail
  local cap=$1 log=$2; shift 2
  timeout "$cap" "$@" > "$OUT/$log" 2>&1; echo "== $log rc=$? ($(date -u +%T))"; grep -v "^ \|^--\|^-\{5\}" "$OUT/$log" | tail -n 40
}
# 1. GPU = CPU checks (shared-prefix attention, GPU lens, GPU flow products)
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py >> "$OUT/gpu_tests.log" 2>&1
echo "== gpu tests rc=$?"; tail -n 15 "$OUT/gpu_tests.log"
# 2. head patching, random Llama-2-7B bf16: naive vs exact (shared prefix) vs exact-concat vs AtP, suffix 15 and 40
step ${PATCH_S:-150} patch_bf16.log python3 benchmarks/bench_patching.py --model random:llama-2-7b --source random \
  --tokens 512 1024 --diff-from-end 15 40 --dtype bfloat16 --device cuda --naive-heads 64 --head-batch 64 128 256 \
  --methods naive exact exact-concat atp --profile --out "$OUT/patch_bf16.json"
# 3. per-rule time at paper scale (config/paper.yaml, fp32 as in the paper; then bf16 with what time is left)
for dt in float32 bfloat16; do
  cap=${RULES_S:-200}; [ $dt = bfloat16 ] && cap=${RULES_BF16_S:-110}
  step $cap rules_$dt.log python3 benchmarks/bench_rules.py --model random:llama-2-7b --device cuda --dtype $dt \
    --correct fictional=0.359 falseont=0.525 --out "$OUT/rules_$dt.csv"
done
date -u
