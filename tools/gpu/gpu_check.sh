#!/usr/bin/env bash
# One-call GPU check for the SharQ kernels (run from the repo root on the GPU machine):
#   bash tools/gpu/gpu_check.sh [quick|full|final|tests|bench]     (default: quick)
# quick: build + GPU tests + benchmark at M=1,4096 (bf16, sharq paths, vLLM baselines if importable)
# full:  build + GPU tests + the full benchmark (7 M values x 4 shapes x all methods)
# final: = full, fitted into SHARQ_TOTAL_S seconds (default 360): the benchmark gets what the
#        tests left (it stops starting new measurements at its budget; sums need all 4 shapes)
# tests: build + GPU tests only;  bench: build + full benchmark only
# SHARQ_BENCH_ARGS: extra benchmark flags (e.g. --gemm-sweep for the GEMM's L2 prefetch depths)
# GPU choice: CUDA_VISIBLE_DEVICES is honoured (PCI bus order, as nvidia-smi numbers them); when
# it is unset and several GPUs are visible, the least busy one (memory used, then utilization)
# is chosen and logged, so a run beside another job on a 2-GPU host does not share its card.
# Every step logs under $OUT (default ./gpu_check_out); a failing step does not stop the next
# one; the last lines printed are a PASS/FAIL summary and the benchmark table.
set -u
MODE="${1:-quick}"
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export SHARQ_BUILD_DIR="${SHARQ_BUILD_DIR:-$PWD/build/jit}"
if [ -d "$HOME/vllm-site" ]; then export PYTHONPATH="$HOME/vllm-site:${PYTHONPATH:-}"; fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
PY="${PYTHON:-python3}"
declare -a SUMMARY=()
T0=$(date +%s)
TOTAL_S="${SHARQ_TOTAL_S:-360}"
export CUDA_DEVICE_ORDER="${CUDA_DEVICE_ORDER:-PCI_BUS_ID}"
if [ -z "${CUDA_VISIBLE_DEVICES:-}" ] && command -v nvidia-smi >/dev/null 2>&1; then
  NGPU=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
  if [ "${NGPU:-0}" -gt 1 ]; then
    PICK=$(nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader,nounits 2>/dev/null \
      | tr -d ' ' | sort -t, -k2,2n -k3,3n | head -1 | cut -d, -f1)
    if [ -n "$PICK" ]; then export CUDA_VISIBLE_DEVICES="$PICK"; fi
  fi
fi

note() { echo "[gpu_check $(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }
step() {  # step NAME TIMEOUT_S LOGFILE CMD...
  local name="$1" to="$2" lf="$3"; shift 3
  note "=== $name: $*"
  local t=$(date +%s)
  ( set -x; timeout "$to" "$@" ) > "$lf" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t))
  if [ $rc -eq 0 ]; then SUMMARY+=("PASS $name (${dt}s)"); else SUMMARY+=("FAIL $name rc=$rc (${dt}s, log: $(basename "$lf"))"); fi
  note "$name rc=$rc in ${dt}s"
  tail -n 25 "$lf" | sed 's/^/    /' | tee -a "$LOG"
  return $rc
}

{
  echo "mode=$MODE  date=$(date -u)  host=$(hostname)"
  nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu,driver_version,clocks.max.sm --format=csv 2>&1 | head -9
  echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-<unset>} CUDA_DEVICE_ORDER=$CUDA_DEVICE_ORDER"
  $PY -c "import torch,sys;print('python',sys.version.split()[0],'torch',torch.__version__,'cuda',torch.version.cuda,'gpu',torch.cuda.get_device_name())" 2>&1
  nvcc --version 2>&1 | tail -1
  $PY -c "import vllm;print('vllm',vllm.__version__)" 2>&1 | tail -1
  $PY -c "import triton;print('triton',triton.__version__)" 2>&1 | tail -1
} 2>&1 | tee -a "$LOG"

# ---- kernels: a prebuilt library (tools/gpu/prebuild_ext.sh, built on the CPU machine against
# torch 2.11.0+cu130 headers) if it loads, else setup.py build (ninja, one arch), else the ops'
# own JIT build. SHARQ_FORCE_BUILD=1 skips the prebuilt library.
IMPORT_CHECK="
from sharq_vllm import ops
ok, why = ops.kernel_path_available('cuda')
print('kernel_path_available:', ok, why)
print(ops.describe_kernel('cuda'))
assert ok, why
"
PREBUILT="$PWD/build/prebuilt/libsharq_C.so"
USE_PREBUILT=0
STAMP="$PWD/build/prebuilt/SOURCES.md5"
if [ -f "$PREBUILT" ] && ! md5sum --quiet -c "$STAMP" >/dev/null 2>&1; then
  note "prebuilt library is stale or unstamped (sharq_vllm/csrc/ changed since tools/gpu/prebuild_ext.sh): building"
  PREBUILT="/nonexistent"
fi
if [ -f "$PREBUILT" ] && [ "${SHARQ_FORCE_BUILD:-0}" != "1" ]; then
  if SHARQ_EXT_LIB="$PREBUILT" SHARQ_JIT=0 step load-prebuilt 120 "$OUT/prebuilt.log" $PY -c "$IMPORT_CHECK"; then
    USE_PREBUILT=1
    export SHARQ_EXT_LIB="$PREBUILT"
  fi
fi
if [ "$USE_PREBUILT" = "0" ]; then
  step build 420 "$OUT/build.log" bash -c "$PY setup.py build_ext --inplace && ls -la sharq_vllm/_C*.so"
  grep -E "registers|spill|error" "$OUT/build.log" | grep -v "^+" | head -40 >> "$LOG"
  step import 300 "$OUT/import.log" $PY -c "$IMPORT_CHECK"
fi

if [ "$MODE" != "bench" ]; then
  TIMEOUT_ARG=""
  if $PY -c "import pytest_timeout" 2>/dev/null; then TIMEOUT_ARG="--timeout=240"; fi
  # one process per file: a CUDA fault in one file cannot poison the others' context
  : > "$OUT/pytest.log"
  for tf in tests/gpu/test_prep_gpu.py tests/gpu/test_gemm_gpu.py tests/gpu/test_integration_gpu.py tests/gpu/test_edge_cases_gpu.py; do
    name="$(basename "$tf" .py)"
    step "$name" 240 "$OUT/pytest_$name.tmp" $PY -m pytest -m gpu "$tf" -q -rfE -p no:cacheprovider $TIMEOUT_ARG -o addopts=""
    { echo "######## $tf"; cat "$OUT/pytest_$name.tmp"; } >> "$OUT/pytest.log"; rm -f "$OUT/pytest_$name.tmp"
  done
fi

if [ "$MODE" = "quick" ]; then
  step bench-quick 240 "$OUT/bench.log" $PY -m benchmarks.kernels.bench_kernels --quick --budget-s 180 --out "$OUT"
elif [ "$MODE" = "final" ]; then
  LEFT=$((TOTAL_S - ($(date +%s) - T0) - 30))
  [ "$LEFT" -lt 90 ] && LEFT=90
  step bench-full $((LEFT + 60)) "$OUT/bench.log" $PY -m benchmarks.kernels.bench_kernels --budget-s "$LEFT" --out "$OUT"
elif [ "$MODE" = "full" ] || [ "$MODE" = "bench" ]; then
  # shellcheck disable=SC2086  # SHARQ_BENCH_ARGS (e.g. --gemm-sweep) is split on purpose
  step bench-full 420 "$OUT/bench.log" $PY -m benchmarks.kernels.bench_kernels --budget-s 330 --out "$OUT" ${SHARQ_BENCH_ARGS:-}
fi

echo | tee -a "$LOG"
echo "================ SharQ gpu_check summary ($MODE, $(($(date +%s) - T0))s) ================" | tee -a "$LOG"
for s in "${SUMMARY[@]}"; do echo "$s" | tee -a "$LOG"; done
grep -E "^######## |(passed|failed|skipped|error).* in [0-9.]+s" "$OUT/pytest.log" 2>/dev/null | tee -a "$LOG"
grep -E "^FAILED|^ERROR" "$OUT/pytest.log" 2>/dev/null | head -15 | tee -a "$LOG"
if [ -f "$OUT/bench.log" ]; then
  sed -n '/^SharQ kernels on/,$p' "$OUT/bench.log" | tee -a "$LOG"
fi
