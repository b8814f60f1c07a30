#!/usr/bin/env bash
# Runs the benchmarks one after another (after setting up the machine); each prints its peer's
# numbers beside trainyard's and the ratios.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >/dev/null
bash benches/embed_throughput.sh
bash benches/encoder_families.sh   # embedding and finetune per encoder family (all seven)
bash benches/store_embeddings.sh
bash benches/queue_throughput.sh
bash benches/finetune_throughput.sh
bash benches/predict_throughput.sh
bash benches/hot_swap.sh
bash benches/telemetry_overhead.sh
bash benches/batch_scoring.sh   # about 25 minutes on 2 cores (100,000 texts on each side)
bash benches/labelling.sh 2000 20000   # labelling next/answer per call at two corpus sizes
bash benches/scale.sh 100000   # every step at 100,000 documents (tiny BERT); compare runs with benches/scale/compare.py
