#!/usr/bin/env bash
# Runs the benchmarks one after another (after setting up the machine). The hot-swap one needs a
# trainyard already serving at TRAINYARD_URL with a model that has two versions: it runs when
# HOT_SWAP_MODEL, HOT_SWAP_V1 and HOT_SWAP_V2 are set, and is skipped otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >/dev/null
bash benches/embed_throughput.sh
bash benches/store_embeddings.sh
bash benches/queue_throughput.sh
bash benches/finetune_throughput.sh
bash benches/predict_throughput.sh
if [ -n "${HOT_SWAP_MODEL:-}" ]; then
  bash benches/hot_swap_load.sh "$HOT_SWAP_MODEL" "${HOT_SWAP_V1:?HOT_SWAP_V1 is not set}" "${HOT_SWAP_V2:?HOT_SWAP_V2 is not set}"
else
  echo "hot_swap_load: skipped (set HOT_SWAP_MODEL, HOT_SWAP_V1, HOT_SWAP_V2 with trainyard serving at \${TRAINYARD_URL:-http://127.0.0.1:8322})"
fi
