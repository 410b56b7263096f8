#!/usr/bin/env bash
# The Dockerfile's install steps, replayed in a clean venv on a CPU machine (CI has no Docker
# engine): build the wheel with --no-build-isolation against an already-installed torch, install
# it with --no-deps, then check the vLLM plugin entry point, the imports and the console script.
# CUDA is NOT compiled here (SHARQ_BUILD_CUDA=0); the Docker build sets SHARQ_BUILD_CUDA=1 and
# additionally requires sharq_vllm/_C in the wheel.
#
# Env: SHARQ_IMAGE_VENV (default /tmp/sharq-image-venv; reused when torch is already in it),
#      PYTHON (default python3.11), TORCH_PIN (default torch==2.13.0).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SHARQ_IMAGE_VENV:-/tmp/sharq-image-venv}"
PY="${PYTHON:-python3.11}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"
log() { printf '[image-install] %s\n' "$*" >&2; }
t0=$(date +%s)

if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    log "pip install $TORCH_PIN safetensors (stands in for the vLLM image's torch)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$TORCH_PIN" safetensors tqdm numpy
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# the build context the Dockerfile sees (.dockerignore allow-list)
mkdir -p "$WORK/src/deploy"
cp "$ROOT"/pyproject.toml "$ROOT"/setup.py "$ROOT"/README.md "$WORK/src/"
cp -r "$ROOT/sharq_vllm" "$WORK/src/"
cp "$ROOT/deploy/ray-node.sh" "$WORK/src/deploy/"
find "$WORK/src" \( -name __pycache__ -o -name '*.so' -o -name '*.egg-info' \) -prune -exec rm -rf {} +

log "Dockerfile stage 1: pip wheel --no-deps --no-build-isolation (SHARQ_BUILD_CUDA=0)"
"${PIP[@]}" install -q "setuptools>=68" wheel
(cd "$WORK/src" && SHARQ_BUILD_CUDA=0 "${PIP[@]}" wheel -q --no-deps --no-build-isolation --wheel-dir "$WORK/dist" .)
wheel=("$WORK"/dist/sharq_vllm-*.whl)
"$VENV/bin/python" - "${wheel[0]}" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert not any(n.startswith("sharq_vllm/_C") for n in names), "CUDA extension built on the CPU path"
for need in ("sharq_vllm/checkpoint/__init__.py", "sharq_vllm/cli.py", "sharq_vllm/options.py",
             "sharq_vllm/csrc/gemm.cu", "sharq_vllm/csrc/sharq_kernels.h"):
    assert need in names, f"{need} missing from the wheel"
print(f"[image-install] wheel ok: {sys.argv[1].rsplit('/', 1)[-1]} ({len(names)} files, no _C)")
PY

log "Dockerfile stage 2: pip install --no-deps the wheel"
"${PIP[@]}" install -q --no-deps --force-reinstall "${wheel[0]}"
cd "$WORK"  # import the installed package, not the source tree
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
eps = [e.value for e in md.entry_points(group="vllm.general_plugins") if e.name == "sharq"]
assert eps == ["sharq_vllm:register"], f"vllm.general_plugins entry point: {eps}"
import sharq_vllm, sharq_vllm.checkpoint, sharq_vllm.cli, sharq_vllm.vllm_plugin  # noqa: E401,F401
assert "site-packages" in sharq_vllm.__file__, sharq_vllm.__file__
scripts = [e.value for e in md.entry_points(group="console_scripts") if e.name == "sharq-vllm"]
print(f"[image-install] plugin entry point ok; console script sharq-vllm: {scripts or 'not declared'}")
PY
"$VENV/bin/python" -m sharq_vllm.cli quantize --help >/dev/null
if grep -q '^sharq-vllm *= *"sharq_vllm.cli:main"' "$ROOT/pyproject.toml"; then
    "$VENV/bin/sharq-vllm" inspect --help >/dev/null  # declared: the console script must work
fi
log "ok in $(( $(date +%s) - t0 ))s"
