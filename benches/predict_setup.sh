#!/usr/bin/env bash
# Starts a trainyard that serves a promoted model, for benches/predict_throughput.sh and
# benches/hot_swap.sh: a fresh database `trainyard_bench_predict`, a slice of the demo data
# (400 reviews + 400 emails), a multi-label dataset, two head versions of model `moderation`
# (seeds 1 and 2), version 1 promoted. `serve` runs with --workers 1 and stays up; its pid goes
# to $PREDICT_SETUP_PIDFILE (the caller kills it). Inference uses 2 single-threaded replicas,
# the same 2 threads the Python peer gets.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
bash scripts/fetch_demo_data.sh >/dev/null
BIN="$CARGO_TARGET_DIR/release/trainyard"
[ -x "$BIN" ] || cargo build --release --bins -q
TRAINYARD_URL="${TRAINYARD_URL:-http://127.0.0.1:8322}"
PIDFILE="${PREDICT_SETUP_PIDFILE:-/dev/null}"
DB=trainyard_bench_predict
psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
export TRAINYARD_SERVER__LISTEN="${TRAINYARD_URL#http://}" TRAINYARD_INFERENCE__THREADS=2 \
  TRAINYARD_LOCAL_MODEL__THREADS=2 TRAINYARD_TRAINING__THREADS=2 RUST_LOG=warn
SLICE="$(mktemp --suffix .jsonl)"
python3 - "$TRAINYARD_DATA_DIR/demo.jsonl" "$SLICE" <<'PY'
import json, sys
by = {}
for line in open(sys.argv[1]):
    by.setdefault(json.loads(line)["source"], []).append(line)
with open(sys.argv[2], "w") as out:
    for lines in by.values():
        stride = max(1, len(lines) // 400)
        out.writelines(lines[::stride][:400])
PY
"$BIN" migrate >/dev/null
"$BIN" import "$SLICE" >/dev/null
rm -f "$SLICE"
# A server stopped just before (the previous benchmark's) may still hold the port.
PORT="${TRAINYARD_URL##*:}"
for _ in $(seq 1 75); do
  ss -ltn "( sport = :$PORT )" | grep -q LISTEN || break; sleep 0.2
done
LOG="$(mktemp --suffix .serve.log)"
"$BIN" serve --workers 1 >"$LOG" 2>&1 &
echo $! >>"$PIDFILE"
for _ in $(seq 1 100); do curl -fs "$TRAINYARD_URL/health" >/dev/null && break; sleep 0.2; done
"$BIN" build-dataset --name bench --sources reviews,emails --labels spam,positive_sentiment \
  --type multi_label 2>/dev/null >"$LOG.dataset"
DATASET="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$LOG.dataset")"
for seed in 1 2; do
  "$BIN" train --dataset "$DATASET" --model-name moderation --epochs 30 --seed "$seed" 2>/dev/null | sed -n 1p
done
curl -fs -X POST "$TRAINYARD_URL/api/v1/models/moderation/versions/1/promote" >/dev/null
for _ in $(seq 1 150); do
  curl -fs "$TRAINYARD_URL/health" | grep -q '"model":"moderation"' && break; sleep 0.2
done
curl -fs "$TRAINYARD_URL/health"; echo
echo "trainyard serving moderation v1 (v2 available) at $TRAINYARD_URL; serve log $LOG"
