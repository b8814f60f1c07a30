#!/usr/bin/env bash
# Benchmark 3: trivial jobs per second, trainyard's job machinery against raw apalis-postgres,
# alternating rounds in one run (benches/queue_throughput.rs says what each side does).
# N jobs per round (5000), CONCURRENCY per worker (8), FETCH batch (100), WORKERS (2),
# POLL_MS (1000), ROUNDS (3). Each side gets its own database, created here if missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
cargo build --release --quiet --example queue_throughput
admin=postgres://postgres@127.0.0.1:5432/postgres
for db in trainyard_bench trainyard_bench_raw; do
  psql "$admin" -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
    || psql "$admin" -qc "CREATE DATABASE $db"
done
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/trainyard_bench
export RAW_DATABASE_URL=postgres://postgres@127.0.0.1:5432/trainyard_bench_raw
RUST_LOG="${RUST_LOG:-warn}" "$CARGO_TARGET_DIR/release/examples/queue_throughput" \
  "${N:-5000}" "${CONCURRENCY:-8}" "${FETCH:-100}" "${WORKERS:-2}" "${POLL_MS:-1000}" "${ROUNDS:-3}"
