#!/usr/bin/env bash
# Round-trips a large artifact (MIB, default 2048) through trainyard's chunked artifact store in
# Postgres and prints time and peak RSS for the write and the read (benches/artifact_roundtrip.rs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
cargo build --release --quiet --example artifact_roundtrip
psql postgres://postgres@127.0.0.1:5432/postgres -tAc "SELECT 1 FROM pg_database WHERE datname='trainyard_bench'" | grep -q 1 \
  || psql postgres://postgres@127.0.0.1:5432/postgres -qc "CREATE DATABASE trainyard_bench"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/trainyard_bench
"$CARGO_TARGET_DIR/release/examples/artifact_roundtrip" "${1:-2048}"
