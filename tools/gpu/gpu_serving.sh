#!/usr/bin/env bash
# Device-side driver for the serving benchmarks (issue 8 items 2-4). Run from the repo root on
# the GPU machine, AFTER the vLLM 0.26 bundle is installed (../shared/device/vllm-bundle.sh):
#
#   bash tools/gpu/gpu_serving.sh STAGE [STAGE ...]
#
# Carry: benchmarks/serving/.shapes (configs are committed; this is the tokenizer pack, ~4 MB,
# built here by `python3 -m benchmarks.serving.shapes fetch`), plus whatever the SharQ kernels
# need (e.g. a prebuilt SHARQ_EXT_LIB). No network, no npm, no pip download on the device.
#
# Stages (each sized for one <= 9-minute call; expected H100 runtimes, engine start with
# torch.compile + CUDA graphs ~60-120 s per method for 8B, more for 70B):
#   smoke        Llama-3.1-8B, sharq only, decode batch 1 and 8, no prefill        ~2.5 min
#   offline-8b   Llama-3.1-8B, fp8 -> sharq -> bf16: decode 1/8/32/128/256 + prefill ~6.5-7.5 min
#   online-8b    Llama-3.1-8B, fp8 -> sharq: vllm serve + bench serve c=1,8,32,128    ~6 min
#   profile-8b   Llama-3.1-8B, fp8 -> sharq: decode 1 and 32, each then profiled (vLLM's torch
#                profiler, 16 steps; per-kernel summary under "profile", run key
#                Llama-3.1-8B#profile; benchmarks/serving/trace_summary.py)      ~3-5 min
#   online-8b-bf16  same for bf16 only                                               ~3 min
#   70b-sharq    Llama-3.1-70B, sharq, max_model_len 8192, util 0.95: decode 1, 32 + 32x(2048+256) ~4-5 min
#   70b-fp8      same for fp8 (the issue's baseline; eager fallback if graphs do not fit) ~4-5 min
#   70b          70b-sharq then 70b-fp8 in one call (only if the budget allows)           ~9 min (tight)
#   tp2          Llama-3.1-8B, TP=2 (2-GPU machine), fp8 -> sharq, decode + prefill    ~5-6 min
#   qwen         Qwen2.5-7B, fp8 -> sharq, decode + prefill                            ~5 min
#   report       only rebuild report/plots from the results JSON
# Methods run in the order given, so the FP8/SharQ pair comes first; each method is a fresh
# process; a method that would not fit the remaining budget is skipped (recorded), never cut.
#
# Environment knobs: BUDGET_S (seconds for the whole STAGE list, default 530; lower it when the
#   bundle install shares the call), METHODS (override a stage's method list, e.g. "sharq"),
#   SHARQ_OPTIONS (JSON for the sharq method, e.g. '{"format":"mxfp4"}'), TAG (run-key suffix
#   for variants), EXTRA_ARGS (appended to every offline.py/online.py command; later flags win,
#   e.g. EXTRA_ARGS="--batches 1,8"), SHARQ_INSTALL=distinfo|pip (how the plugin entry point is made visible;
#   default distinfo: no build, no network), OUT (default ./serving_out).
#
# Output under $OUT (<= 8 files, flat): serving-<card>.json (merged with
# benchmarks/results/serving-<card>.json when that exists in the repo copy), serving-<card>.md,
# serving-<card>-decode.png, serving-<card>-latency.png, logs-<stages>.tar.gz, stage-<stages>.txt.
# After each call: copy $OUT/serving-<card>.json to benchmarks/results/ here so the next stage
# merges into it.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"
[ $# -ge 1 ] || { sed -n '2,40p' "$0"; exit 2; }
OUT="${OUT:-$REPO/serving_out}"
mkdir -p "$OUT"
STAGES="$*"
STAGE_NAME="$(echo "$STAGES" | tr ' ' '_' | tr -cd 'A-Za-z0-9._-')"
BUDGET_S="${BUDGET_S:-530}"
T0=$(date +%s)
LOGDIR="/tmp/sharq-serving-logs/$STAGE_NAME-$T0"
mkdir -p "$LOGDIR"
TXT="$OUT/stage-$STAGE_NAME.txt"

left() { local l=$((BUDGET_S - ($(date +%s) - T0))); [ "$l" -lt 1 ] && l=1; echo "$l"; }
note() { echo "[gpu_serving +$(($(date +%s) - T0))s] $*"; }

# ---- environment --------------------------------------------------------------------------
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export SHARQ_BUILD_DIR="${SHARQ_BUILD_DIR:-$REPO/build/jit}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"
export SHARQ_SHAPES_DIR="${SHARQ_SHAPES_DIR:-$HOME/sharq-shapes}"
PY="${PYTHON:-python3}"
if [ -d "$HOME/vllm-site" ]; then export PYTHONPATH="$HOME/vllm-site:${PYTHONPATH:-}"; fi

# ---- plugin visible to vLLM's entry-point scan in every process ---------------------------
# vLLM loads plugins with importlib.metadata.entry_points(group="vllm.general_plugins"): that
# needs a *.dist-info with entry_points.txt on sys.path, plus the package importable. Default:
# write a minimal dist-info into $HOME/sharq-site and put it and the repo root on PYTHONPATH
# (children inherit it: API server, engine core, TP workers). SHARQ_INSTALL=pip instead runs an
# offline editable install (also builds the CUDA extension through setup.py when nvcc is there).
SITE="$HOME/sharq-site"
install_plugin() {
  local ver
  ver=$("$PY" -c "import re;print(re.search(r'^version *= *\"([^\"]+)\"', open('pyproject.toml').read(), re.M).group(1))")
  if [ "${SHARQ_INSTALL:-distinfo}" = pip ]; then
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . || { note "pip install -e . FAILED"; return 1; }
  else
    rm -rf "$SITE"; mkdir -p "$SITE/sharq_vllm-$ver.dist-info"
    printf 'Metadata-Version: 2.1\nName: sharq-vllm\nVersion: %s\n' "$ver" > "$SITE/sharq_vllm-$ver.dist-info/METADATA"
    printf '[vllm.general_plugins]\nsharq = sharq_vllm:register\n' > "$SITE/sharq_vllm-$ver.dist-info/entry_points.txt"
    printf 'sharq_vllm\n' > "$SITE/sharq_vllm-$ver.dist-info/top_level.txt"
    : > "$SITE/sharq_vllm-$ver.dist-info/RECORD"
    export PYTHONPATH="$REPO:$SITE:${PYTHONPATH:-}"
  fi
}

declare -A EST=([smoke]=150 [offline-8b]=420 [online-8b]=360 [online-8b-bf16]=180 [70b-sharq]=270
                [70b-fp8]=270 [70b]=540 [tp2]=330 [qwen]=300 [profile-8b]=300 [report]=5)
setup() {
  local tot=30 st
  for st in $STAGES; do tot=$((tot + ${EST[$st]:-0})); done
  note "stages: $STAGES  expected ~${tot}s on H100 (setup ~30s + stages; engine starts dominate)  budget ${BUDGET_S}s  OUT=$OUT"
  [ "$tot" -gt "$BUDGET_S" ] && note "WARNING: expected time exceeds BUDGET_S: later methods will be skipped (recorded as skipped)"
  nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader 2>&1 | head -8
  install_plugin
  "$PY" -m benchmarks.serving.shapes materialize >/dev/null || { note "shape folders: FAILED (carry benchmarks/serving/.shapes)"; exit 3; }
  "$PY" - <<'EOF' || { note "setup check FAILED"; exit 3; }
import importlib.metadata as md, time
t = time.time()
eps = [e for e in md.entry_points(group="vllm.general_plugins") if e.name == "sharq"]
assert eps, "sharq entry point not visible (vllm.general_plugins)"
import torch, vllm
import sharq_vllm
eps[0].load()()  # registers 'sharq' (what vLLM does in every process)
from vllm.model_executor.layers.quantization import get_quantization_config
print(f"setup: vllm {vllm.__version__} torch {torch.__version__} cuda {torch.version.cuda} "
      f"gpus {torch.cuda.device_count()} sharq config {get_quantization_config('sharq').__name__} "
      f"plugin {eps[0].value} ({time.time() - t:.1f}s)")
try:  # build / load the SharQ kernels once here, so vLLM's processes find them cached
    from sharq_vllm import kernels
    print("setup: sharq kernels:", kernels.load_extension())
except Exception as e:  # noqa: BLE001
    print("setup: sharq kernels not loaded here:", repr(e))
EOF
  CARD=$("$PY" -c "from benchmarks.serving import common; print(common.card_slug(common.detect_card()))")
  RESULT="$OUT/serving-$CARD.json"
  if [ ! -f "$RESULT" ] && [ -f "benchmarks/results/serving-$CARD.json" ]; then
    cp "benchmarks/results/serving-$CARD.json" "$RESULT"; note "merging into previous results (benchmarks/results/serving-$CARD.json)"
  fi
  note "setup done; results -> $RESULT"
}

export SHARQ_RUNS_FILE="$LOGDIR/.runs"
COMMON=(--out "$OUT" --log-dir "$LOGDIR")
[ -n "${SHARQ_OPTIONS:-}" ] && COMMON+=(--sharq-options "$SHARQ_OPTIONS")
[ -n "${TAG:-}" ] && COMMON+=(--tag "$TAG")

offline() {  # offline ESTIMATE_S METHODS ARGS...
  local est="$1" methods="${METHODS:-$2}"; shift 2
  note "offline $* methods=$methods: expected ~${est}s, $(left)s left in budget"
  # shellcheck disable=SC2086  # EXTRA_ARGS is split on purpose; later flags override earlier ones
  "$PY" -m benchmarks.serving.offline --methods "$methods" "${COMMON[@]}" --budget-s "$(left)" "$@" ${EXTRA_ARGS:-}
  note "offline rc=$?"
}
online() {
  local est="$1" methods="${METHODS:-$2}"; shift 2
  note "online $* methods=$methods: expected ~${est}s, $(left)s left in budget"
  # shellcheck disable=SC2086
  "$PY" -m benchmarks.serving.online --methods "$methods" "${COMMON[@]}" --budget-s "$(left)" "$@" ${EXTRA_ARGS:-}
  note "online rc=$?"
}

main() {
setup
for st in $STAGES; do
  case "$st" in
    smoke)      offline 150 sharq --model Llama-3.1-8B --batches 1,8 --prefill-prompts 0 --min-method-s 60 ;;
    offline-8b) offline 420 fp8,sharq,bf16 --model Llama-3.1-8B ;;
    online-8b)  online 360 fp8,sharq --model Llama-3.1-8B --concurrency 1,8,32,128 ;;
    online-8b-bf16) online 180 bf16 --model Llama-3.1-8B --concurrency 1,8,32,128 ;;
    70b-sharq|70b-fp8|70b)
      m=${st#70b-}; [ "$st" = 70b ] && m=sharq,fp8
      offline 270 "$m" --model Llama-3.1-70B --max-model-len 8192 --gpu-memory-utilization 0.95 \
        --batches 1,32 --prefill-prompts 0 --long-batch 32 --long-input 2048 --eager-fallback \
        --method-timeout-s 420 --min-method-s 180 ;;
    tp2)
      n=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$n" -ge 2 ] || note "WARNING: tp2 needs 2 GPUs, nvidia-smi lists $n"
      offline 330 fp8,sharq --model Llama-3.1-8B --tp 2 --min-method-s 120 ;;
    qwen)       offline 300 fp8,sharq --model Qwen2.5-7B ;;
    profile-8b) offline 300 fp8,sharq --model Llama-3.1-8B --batches 1,32 --prefill-prompts 0 \
                  --profile-batches 1,32 --tag profile ;;
    report)     ;;
    *) note "unknown stage $st"; exit 2 ;;
  esac
done

# ---- report, logs, short table -----------------------------------------------------------
tar -czf "$OUT/logs-$STAGE_NAME.tar.gz" -C "$LOGDIR" --exclude=.work . 2>/dev/null || true
if [ -f "$RESULT" ]; then
  "$PY" -m benchmarks.serving.report "$RESULT" --plots "$OUT" --quiet || note "report FAILED"
  note "total $(($(date +%s) - T0))s; files in $OUT:"; ls -la "$OUT" | tail -n +2
  echo
  "$PY" -m benchmarks.serving.report "$RESULT" --print-runs "$(sort -u "$SHARQ_RUNS_FILE" 2>/dev/null | tr '\n' ' ')" --no-write
fi
}

main 2>&1 | tee -a "$TXT"
exit "${PIPESTATUS[0]}"
