#!/usr/bin/env bash
# README line 2 and CI: set up the CPU stack (scripts/setup.sh), lint, type-check, run the tests.
# GPU tests (marker `gpu`) skip themselves without a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== deploy lint (Dockerfile, manifests, the image's install steps)"; bash scripts/lint_deploy.sh
echo "== pytest"; python -m pytest -q "$@"
