#!/usr/bin/env bash
# Benchmark 2: storing 100k 384-d embeddings, trainyard's batched upsert vs one INSERT per row.
# N (default 100000) rows each way; runs against a scratch database trainyard_bench.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
N="${N:-100000}"
cargo build --release --quiet --example store_embeddings
psql postgres://postgres@127.0.0.1:5432/postgres -tAc "SELECT 1 FROM pg_database WHERE datname='trainyard_bench'" | grep -q 1 \
  || psql postgres://postgres@127.0.0.1:5432/postgres -qc "CREATE DATABASE trainyard_bench"
DATABASE_URL=postgres://postgres@127.0.0.1:5432/trainyard_bench "$CARGO_TARGET_DIR/release/examples/store_embeddings" "$N" "$N"
