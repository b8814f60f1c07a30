#!/usr/bin/env bash
# Benchmark 2: storing 100k 384-d embeddings, trainyard's batched upsert (1 writer, and 2 as
# with two embed workers) vs one INSERT per row as the first seed did. N rows (default 100000).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
N="${N:-100000}"
cargo build --release --quiet --example store_embeddings
psql postgres://postgres@127.0.0.1:5432/postgres -tAc "SELECT 1 FROM pg_database WHERE datname='trainyard_bench'" | grep -q 1 \
  || psql postgres://postgres@127.0.0.1:5432/postgres -qc "CREATE DATABASE trainyard_bench"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/trainyard_bench
WRITERS=1 "$CARGO_TARGET_DIR/release/examples/store_embeddings" "$N" "$N"
WRITERS=2 "$CARGO_TARGET_DIR/release/examples/store_embeddings" "$N" "$((N / 10))"
