#!/usr/bin/env bash
# Warp-stall breakdown of the small-M GEMM kernels (ncu raw metrics, CSV a run) on the GPU machine:
#   bash tools/gpu/profile_stalls.sh OUTDIR "SHAPE M VARIANT KERNEL_REGEX" ...
# e.g. "gate_up 1 1 gemm_stream" (VARIANT: sharq_kernels.h GemmVariant, 0 = the op's choice).
# Uses the prebuilt library (tools/gpu/prebuild_ext.sh). docs/KERNELS.md quotes the results.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
out=${1:?OUTDIR}; shift
mkdir -p "$out"
export SHARQ_EXT_LIB=$PWD/build/prebuilt/libsharq_C.so SHARQ_JIT=0 PYTHONPATH=$PWD
metrics='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__issue_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,smsp__inst_executed.sum,launch__registers_per_thread,sm__warps_active.avg.per_cycle_active,l1tex__t_sector_hit_rate.pct'
for cfg in "$@"; do
  read -r shape m variant kernel <<< "$cfg"
  f="$out/ncu_${shape}_m${m}_v${variant}"
  ncu --clock-control none --kernel-name "regex:$kernel" --launch-skip 3 --launch-count 1 --metrics "$metrics" \
    --csv --page raw python3 tools/gpu/profile_decode_gemm.py --shape "$shape" --m "$m" --variant "$variant" \
    > "$f.csv" 2> "$f.err"
  echo "$cfg: rc=$? $(wc -l < "$f.csv") lines"
done
