#!/usr/bin/env bash
# Soak test (by hand, not in CI): a real `serve` and 2 `worker` processes on a fresh database,
# DURATION seconds (default 600) of mixed load on loopback from scripts/soak_driver.py
# (ingest, dataset builds, predictions at PREDICT_RPS, training runs + promotions, cancels),
# then a report: requests by route and status, p50/p99 by route, jobs by final state, RSS and
# thread count of each process every 10 s, serve's RSS around each promotion, and verdict lines
# (lost jobs, 5xx, memory growth over the second half of the load: see the driver).
# Env: DURATION (600), PREDICT_RPS (20), MEM_BOUND_MB (128), PORT (18322), KEEP_DB=1 keeps the
# database, SKIP_BUILD=1 uses the binary already built, TRAINYARD_TOKEN is sent as a bearer
# token when set. Exit status 0 only when every verdict passes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TRAINYARD_ROOT"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet --bins
BIN="$CARGO_TARGET_DIR/release/trainyard"
PORT="${PORT:-18322}"
DB="ty_soak_$(date +%s)_$$"
ADMIN=postgres://postgres@127.0.0.1:5432/postgres
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
LOGS="$(mktemp -d /tmp/ty-soak.XXXXXX)"
psql "$ADMIN" -qc "CREATE DATABASE $DB"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP_DB:-0}" != 1 ]; then
    psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
  else
    echo "database kept: $DATABASE_URL"
  fi
  echo "process logs: $LOGS"
}
trap cleanup EXIT
export RUST_LOG="${RUST_LOG:-warn}" TRAINYARD_LOCAL_MODEL__THREADS=1 TRAINYARD_TRAINING__THREADS=1
"$BIN" migrate >"$LOGS/migrate.log" 2>&1
"$BIN" serve --listen "127.0.0.1:$PORT" >"$LOGS/serve.log" 2>&1 &
pids+=($!)
serve_pid=$!
for i in 1 2; do
  "$BIN" worker --queues dataset_build,embed,train --concurrency 2 --name "soak-$i" \
    >"$LOGS/worker-$i.log" 2>&1 &
  pids+=($!)
done
echo "soak: database $DB, serve pid $serve_pid on 127.0.0.1:$PORT, workers ${pids[1]} ${pids[2]}, logs $LOGS"
python3 "$TRAINYARD_ROOT/scripts/soak_driver.py" \
  --base "http://127.0.0.1:$PORT" --database-url "$DATABASE_URL" \
  --duration "${DURATION:-600}" --predict-rps "${PREDICT_RPS:-20}" \
  --mem-bound-mb "${MEM_BOUND_MB:-128}" \
  --process "serve=$serve_pid" --process "worker-1=${pids[1]}" --process "worker-2=${pids[2]}"
