#!/usr/bin/env bash
# Benchmark 7: the cost of telemetry on inference. The same trainyard `serve` (one promoted
# head model, benches/predict_setup.sh's data) is loaded with hey on POST /predict, alternately
# with export off (no OTEL_* variables: no exporter, no OpenTelemetry layer) and export on
# (traces for every request + OTLP metrics every 5 s over gRPC to a real collector, rotel from
# PyPI, which discards them). ROUNDS (3) rounds of DURATION_S (15) each after WARMUP_S (3);
# prints req/s per round, the best of each side and the ratio on/off. Goal: on/off >= 0.97.
#
#   bash benches/telemetry_overhead.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
ROUNDS="${ROUNDS:-3}" DURATION_S="${DURATION_S:-15}" WARMUP_S="${WARMUP_S:-3}" CONCURRENCY="${CONCURRENCY:-16}"
PORT="${PORT:-8322}"
export TRAINYARD_URL="http://127.0.0.1:$PORT"
BIN="$CARGO_TARGET_DIR/release/trainyard"
command -v hey >/dev/null || { apt-get install -y -q hey >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q hey >/dev/null; }; }
"$TRAINYARD_VENV/bin/python" -c "import rotel" 2>/dev/null || "$TRAINYARD_VENV/bin/pip" install -q --pre rotel
ROTEL="$(ls "$TRAINYARD_VENV"/lib/python3*/site-packages/rotel/rotel-agent | head -n1)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/trainyard_telemetry.XXXXXX")"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# 1. Data and a promoted model (the setup's own serve is stopped afterwards).
PREDICT_SETUP_PIDFILE="$WORK/setup.pids" bash benches/predict_setup.sh >/dev/null
while read -r p; do kill "$p" 2>/dev/null || true; done <"$WORK/setup.pids"
sleep 1
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/trainyard_bench_predict"
export TRAINYARD_SERVER__LISTEN="127.0.0.1:$PORT" TRAINYARD_INFERENCE__THREADS=2 RUST_LOG=warn

# 2. The collector: OTLP/gRPC in, nothing out.
GRPC_PORT=$((PORT + 1000))
"$ROTEL" start --otlp-grpc-endpoint "127.0.0.1:$GRPC_PORT" --otlp-http-endpoint "127.0.0.1:$((GRPC_PORT + 1))" \
  --exporter blackhole >"$WORK/rotel.log" 2>&1 & pids+=($!)

printf '%s' '{"text": "I ordered the blue jacket two weeks ago and it still has not arrived, and nobody from customer support has answered any of my three emails so far."}' >"$WORK/predict.json"

run_side() { # on|off -> prints req/s
  local side="$1" pid
  if [ "$side" = on ]; then
    OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$GRPC_PORT" OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
      OTEL_METRIC_EXPORT_INTERVAL=5000 OTEL_SERVICE_NAME=trainyard-bench "$BIN" serve >"$WORK/serve-$side.log" 2>&1 &
  else
    "$BIN" serve >"$WORK/serve-$side.log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 1 150); do curl -fs "$TRAINYARD_URL/health" | grep -q '"model":"moderation"' && break; sleep 0.2; done
  hey -z "${WARMUP_S}s" -c "$CONCURRENCY" -m POST -T application/json -D "$WORK/predict.json" "$TRAINYARD_URL/predict" >/dev/null
  hey -z "${DURATION_S}s" -c "$CONCURRENCY" -m POST -T application/json -D "$WORK/predict.json" "$TRAINYARD_URL/predict" >"$WORK/hey-$side.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  for _ in $(seq 1 75); do ss -ltn "( sport = :$PORT )" | grep -q LISTEN || break; sleep 0.2; done
  local non2xx
  non2xx="$(grep -E '^\s+\[[0-9]+\]' "$WORK/hey-$side.txt" | grep -v '\[200\]' | awk '{s += $2} END {print s + 0}')"
  [ "$non2xx" = 0 ] || echo "warning: $non2xx non-200 answers with export $side" >&2
  awk '/Requests\/sec/ {print $2}' "$WORK/hey-$side.txt"
}

echo "POST /predict, $CONCURRENCY concurrent, ${DURATION_S}s per side per round, $(nproc) cores, $(date -u +%F)"
best_on=0 best_off=0
for round in $(seq 1 "$ROUNDS"); do
  off="$(run_side off)"; on="$(run_side on)"
  printf 'round %d: export off %8.1f req/s   export on %8.1f req/s   on/off %.3f\n' "$round" "$off" "$on" "$(python3 -c "print($on/$off)")"
  best_off="$(python3 -c "print(max($best_off, $off))")"; best_on="$(python3 -c "print(max($best_on, $on))")"
done
printf 'best: export off %.1f req/s, export on %.1f req/s, ratio on/off %.3f (goal >= 0.97)\n' \
  "$best_off" "$best_on" "$(python3 -c "print($best_on/$best_off)")"
grep -q 'ERROR\|error' "$WORK/serve-on.log" && { echo "serve log (export on) had errors:"; grep -i error "$WORK/serve-on.log" | head -5; } || true
