#!/usr/bin/env bash
# Set up everything the tests need (all extras, Debian data packages) and run lint + the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
