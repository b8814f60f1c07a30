#!/usr/bin/env bash
# Hot swap under load, self-contained: starts trainyard with two versions of `moderation`
# (benches/predict_setup.sh), then 30 s of POST /predict at concurrency 8 while the served
# version flips every 5 s (benches/hot_swap_load.sh). Prints the failed-request count (goal 0).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export TRAINYARD_URL="${TRAINYARD_URL:-http://127.0.0.1:8322}"
export PREDICT_SETUP_PIDFILE="$(mktemp)"
cleanup() {
  while read -r pid; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done <"$PREDICT_SETUP_PIDFILE"
  rm -f "$PREDICT_SETUP_PIDFILE"
}
trap cleanup EXIT
bash benches/predict_setup.sh
bash benches/hot_swap_load.sh moderation 1 2
