#!/usr/bin/env bash
# Runs the three benchmarks one after another (after setting up the machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >/dev/null
bash benches/embed_throughput.sh
bash benches/store_embeddings.sh
bash benches/queue_throughput.sh
