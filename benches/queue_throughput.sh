#!/usr/bin/env bash
# Benchmark 3: trivial jobs per second through the embed queue with 2 worker processes.
# N jobs (default 5000), CONCURRENCY per worker (8), FETCH batch (100).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
cargo build --release --quiet --bins --example queue_throughput
psql postgres://postgres@127.0.0.1:5432/postgres -tAc "SELECT 1 FROM pg_database WHERE datname='trainyard_bench'" | grep -q 1 \
  || psql postgres://postgres@127.0.0.1:5432/postgres -qc "CREATE DATABASE trainyard_bench"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/trainyard_bench TRAINYARD_BIN="$CARGO_TARGET_DIR/release/trainyard"
"$CARGO_TARGET_DIR/release/examples/queue_throughput" "${N:-5000}" "${CONCURRENCY:-8}" "${FETCH:-100}"
