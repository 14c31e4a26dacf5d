#!/usr/bin/env bash
# Set up everything the tests need (all extras, Debian data packages) and run lint (ruff, the import
# layers of pyproject.toml's [tool.importlinter]) + the test suite.
# Tests run in two worker processes with one math thread each: the suite's small models gain
# nothing from intra-op threads, and the Flower tests spend most of their time waiting on processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/ruff check src tests benchmarks
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
