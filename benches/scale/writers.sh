#!/usr/bin/env bash
# Concurrent corpus writers and the corpus generation (issue 18): W psql sessions at once, each
# running T transactions of an import batch (D documents, then 2 votes each, then commit), timed
# with the generation as shipped (16 shard rows, each writer bumping its backend's shard) and,
# in the same run and database, with the previous trigger body swapped in (one row every writer
# bumps, held until its commit). Prints seconds, transactions/s and the ratio. THINK_MS (default 0)
# adds that much time between the last write and the commit, as a client's round trips would.
# Usage: benches/scale/writers.sh [W=2] [T=60] [D=500] [THINK_MS=0]
set -euo pipefail
W="${1:-2}"; T="${2:-60}"; D="${3:-500}"; THINK_MS="${4:-0}"
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
BIN="${TRAINYARD_BIN:-$CARGO_TARGET_DIR/release/trainyard}"
DB=trainyard_writers_bench
ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
URL="postgres://postgres@127.0.0.1:5432/$DB"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"; psql "$ADMIN_URL" -q -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
psql "$ADMIN_URL" -q -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
DATABASE_URL="$URL" "$BIN" migrate >/dev/null 2>&1

# One writer's script: T import batches into its own source.
for w in $(seq 1 "$W"); do
  for t in $(seq 1 "$T"); do
    cat <<SQL
BEGIN;
WITH d AS (INSERT INTO documents (source, external_id, title)
           SELECT 'w${w}-' || :'round', 'b${t}-' || i, 'document ' || i FROM generate_series(1, $D) i RETURNING id)
INSERT INTO annotations (document_id, annotator, label, value, annotated_at)
SELECT id, a, 'spam', id % 2 = 0, now() FROM d, unnest(ARRAY['ann', 'bob']) a;
UPDATE documents SET title = title || '.' WHERE source = 'w${w}-' || :'round' AND external_id = 'b${t}-1';
SELECT pg_sleep($THINK_MS / 1000.0);
COMMIT;
SQL
  done > "$WORK/writer_$w.sql"
done

run() { # $1: round name; prints seconds
  local start end
  start=$(date +%s%N)
  for w in $(seq 1 "$W"); do
    psql "$URL" -q -v ON_ERROR_STOP=1 -v round="$1" -f "$WORK/writer_$w.sql" >/dev/null &
  done
  wait
  end=$(date +%s%N)
  echo "scale=3; ($end - $start) / 1000000000" | bc
}

one_row() {
  psql "$URL" -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE OR REPLACE FUNCTION corpus_generation_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE corpus_generations SET n = n + 1 WHERE scope = TG_ARGV[0] AND shard = 0;
    RETURN NULL;
END
$$;
SQL
}
sharded() {
  psql "$URL" -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE OR REPLACE FUNCTION corpus_generation_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE corpus_generations SET n = n + 1
    WHERE scope = TG_ARGV[0] AND shard = pg_backend_pid() % 16;
    RETURN NULL;
END
$$;
SQL
}

echo "corpus writers: $W at once, $T transactions each of $D documents + $((2 * D)) votes + 1 edit + ${THINK_MS} ms before the commit ($(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores)"
printf '%-28s %10s %10s %10s\n' "generation" "round" "seconds" "tx/s"
declare -A best
for round in 1 2 3; do
  for mode in one_row sharded; do
    "$mode"
    s=$(run "$mode-$round")
    printf '%-28s %10s %10s %10.1f\n' "$mode" "$round" "$s" "$(echo "$W * $T / $s" | bc -l)"
    if [ -z "${best[$mode]:-}" ] || [ "$(echo "$s < ${best[$mode]}" | bc)" = 1 ]; then best[$mode]=$s; fi
  done
done
sharded
echo "best of 3: one row ${best[one_row]} s, 16 shards ${best[sharded]} s; one row / shards = $(echo "scale=2; ${best[one_row]} / ${best[sharded]}" | bc)x"
