#!/usr/bin/env bash
# README line 2 and CI: set up the CPU stack (scripts/setup.sh), lint, type-check, run the tests.
# GPU tests (marker `gpu`) skip themselves without a CUDA device. pytest runs verbose (one line
# per test with the overall percentage: ~30 min on 2 cores, the server tests are the slow ones)
# and ends with the 25 slowest tests. Extra arguments go to pytest (e.g. -k, -x, tests/server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== deploy lint (Dockerfile, manifests, the image's install steps)"; bash scripts/lint_deploy.sh
echo "== pytest"; python -m pytest -v --durations=25 "$@"
