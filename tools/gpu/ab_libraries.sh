#!/usr/bin/env bash
# Same-process A/B of kernel-library builds on one GPU (what kernels-H200-stream-epilogue.json and
# the earlier *-experiment / -variants JSONs measured): each library in its own Python process,
# the libraries alternating, ROUNDS rounds, so a slow minute of the card hits every variant alike.
#
#   bash tools/gpu/ab_libraries.sh OUT NAME=PATH/libsharq_C.so [NAME=PATH ...]
#
# Build the variants here first (no GPU needed), e.g.
#   EXTRA_NVFLAGS=-DSOME_KNOB=1 bash tools/gpu/prebuild_ext.sh /tmp/v1/libsharq_C.so
# and compare their machine code with python3 tools/cubin_diff.py (which kernels changed).
# Per library, before any timing, the GPU test that holds the mma.sync kernels to the same bits
# (tests/gpu/test_gemm_gpu.py::test_gemm_variants_same_bits; BITS=0 skips it, for a variant that
# changes the summation order on purpose; BITS=gemm instead compares every library's GEMM outputs
# bitwise with the first library's, tools/gpu/gemm_bits.py, for a variant meant to compute the same
# function; a library that fails is not timed and the script exits 1). Then, per round and library,
# benchmarks/kernels/bench_kernels.py --methods $METHODS --ms $MS --no-prep-sweep.
# Env: MS (default 1,8,16,32), ROUNDS (2), METHODS (sharq,sharq_gemm), BITS (1), BENCH_ARGS (more
# bench_kernels arguments, e.g. "--gemm-sweep --gemm-variants auto,wgmmars --gemm-sweep-ms 8,16,32"
# to time forced kernels per layer in every library's process).
# Output: OUT/bits-NAME.log, OUT/run-R-NAME/kernels-<card>.json + .log, OUT/summary.txt (sums; with
# --gemm-sweep also the forced kernels' sums, GEMM alone / after the preparation).
set -u
[ $# -ge 2 ] || { echo "usage: ab_libraries.sh OUT NAME=LIB.so ..." >&2; exit 2; }
mkdir -p "$1" && OUT=$(cd "$1" && pwd) || exit 2
shift
declare -a NAMES=() LIBS=()
for spec in "$@"; do  # paths resolved from the caller's directory, before the cd below
  name=${spec%%=*} lib=${spec#*=}
  [ -f "$lib" ] || { echo "no library $lib (for $name)" >&2; exit 2; }
  NAMES+=("$name"); LIBS+=("$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")")
done
cd "$(dirname "$0")/../.." || exit 2
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 SHARQ_JIT=0
MS=${MS:-1,8,16,32} ROUNDS=${ROUNDS:-2} METHODS=${METHODS:-sharq,sharq_gemm}
read -r -a BENCH_EXTRA <<< "${BENCH_ARGS:-}"
log() { echo "[$(date -u +%T)] $*"; }
declare -A BAD=()  # libraries that failed the bit test: not timed, exit status 1
if [ "${BITS:-1}" = gemm ]; then
  for i in "${!NAMES[@]}"; do
    SHARQ_EXT_LIB=${LIBS[$i]} timeout 600 python3 tools/gpu/gemm_bits.py dump "$OUT/bits-${NAMES[$i]}.pt" \
      > "$OUT/bits-${NAMES[$i]}.log" 2>&1
    rc=$?
    if [ $rc = 0 ] && [ "$i" != 0 ]; then
      python3 tools/gpu/gemm_bits.py compare "$OUT/bits-${NAMES[0]}.pt" "$OUT/bits-${NAMES[$i]}.pt" \
        >> "$OUT/bits-${NAMES[$i]}.log" 2>&1
      rc=$?
    fi
    log "${NAMES[$i]}: GEMM outputs against ${NAMES[0]}'s rc=$rc ($(tail -1 "$OUT/bits-${NAMES[$i]}.log"))"
    [ $rc = 0 ] || BAD[$i]=1
  done
elif [ "${BITS:-1}" != 0 ]; then
  for i in "${!NAMES[@]}"; do
    SHARQ_EXT_LIB=${LIBS[$i]} timeout 600 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts= \
      "tests/gpu/test_gemm_gpu.py::test_gemm_variants_same_bits" > "$OUT/bits-${NAMES[$i]}.log" 2>&1
    rc=$?
    log "${NAMES[$i]}: same-bits test rc=$rc ($(tail -1 "$OUT/bits-${NAMES[$i]}.log"))"
    [ $rc = 0 ] || BAD[$i]=1
  done
fi
for r in $(seq 1 "$ROUNDS"); do
  for i in "${!NAMES[@]}"; do
    [ -z "${BAD[$i]:-}" ] || continue
    d="$OUT/run-$r-${NAMES[$i]}"
    mkdir -p "$d"
    SHARQ_EXT_LIB=${LIBS[$i]} timeout 600 python3 -m benchmarks.kernels.bench_kernels --methods "$METHODS" \
      --ms "$MS" --no-prep-sweep "${BENCH_EXTRA[@]}" --out "$d" --out-only > "$d/bench.log" 2>&1
    log "round $r ${NAMES[$i]}: rc=$?"
  done
done
python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import glob, json, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "run-*", "kernels-*.json"))):
    run = os.path.basename(os.path.dirname(f))
    res = json.load(open(f))
    for meth, sums in res.get("sum_us", {}).items():
        print(f"{run:24s} {meth:12s} " + " ".join(f"M{m}={v:.2f}" for m, v in sums.items()))
    for m, kernels in res.get("gemm_variants_us", {}).get("sum", {}).items():
        print(f"{run:24s} forced {m:7s} " + " ".join(f"{k}={v['gemm']:.2f}/{v['prep+gemm']:.2f}" for k, v in kernels.items()))
PY
[ ${#BAD[@]} = 0 ] || { echo "failed the same-bits test (not timed): $(for i in "${!BAD[@]}"; do printf "%s " "${NAMES[$i]}"; done)" >&2; exit 1; }
