#!/usr/bin/env bash
# Issue 18's proof: N synthetic documents through every step (serve + 2 workers, a tiny random BERT);
# prints a table (step, seconds, docs/s, peak RSS per process, database size) and writes
# benches/scale/out/scale_N.json (compare two with benches/scale/compare.py A.json B.json).
# Env: TRAINYARD_BIN, SCALE_DB (trainyard_scale_N), SCALE_WORK (/tmp/trainyard_scale_N),
# SCALE_OUT (the JSON path), SCALE_DROP_DB=1 (drop the database at the end), SCALE_STEP_TIMEOUT (s),
# SCALE_LABEL (what the binary is, printed and kept in the JSON), SCALE_ANALYZE=1 (ANALYZE between steps,
# untimed, as autovacuum would; this machine's Postgres has autovacuum = off), SCALE_CONFIG_SRC (the
# config folder the binary was built with; default config/).
set -euo pipefail
N="${1:?usage: benches/scale.sh N}"
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
BIN="${TRAINYARD_BIN:-$CARGO_TARGET_DIR/release/trainyard}"
DB="${SCALE_DB:-trainyard_scale_$N}"
WORK="${SCALE_WORK:-/tmp/trainyard_scale_$N}"
OUT="${SCALE_OUT:-benches/scale/out/scale_$N.json}"
ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
say() { echo "[scale $N] $*" >&2; }
[ -x "$BIN" ] || { say "no trainyard binary at $BIN (cargo build --release)"; exit 2; }
rm -rf "$WORK" && mkdir -p "$WORK/config" "$WORK/logs"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${SCALE_DROP_DB:-0}" = 1 ]; then psql "$ADMIN_URL" -q -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true; fi
}
trap cleanup EXIT

say "database $DB (dropped and created), work folder $WORK"
psql "$ADMIN_URL" -q -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"

say "writing the tiny BERT and $N documents"
python benches/scale/make_model.py "$WORK/tiny-bert" "$TRAINYARD_LOCAL_MODEL_DIR" 2>/dev/null >&2
t0=$(date +%s%N)
python benches/scale/make_corpus.py "$N" "$WORK/corpus.jsonl" "$TRAINYARD_LOCAL_MODEL_DIR/vocab.txt"
say "corpus: $(du -h "$WORK/corpus.jsonl" | cut -f1) in $(( ($(date +%s%N) - t0) / 1000000 )) ms"

# The shipped settings plus a local model `tiny-bert` (the datasets' default); auth is off on loopback.
CONFIG_SRC="${SCALE_CONFIG_SRC:-config}"
cp "$CONFIG_SRC/trainyard.toml" "$WORK/config/"
{ cat "$CONFIG_SRC/embedding_models.toml"; printf '\n[models.tiny-bert]\nname = "tiny-bert"\ntype = "local"\n'
  printf 'dir = "%s"\ndimensions = 64\nmax_tokens = 256\nmax_batch_size = 256\n' "$WORK/tiny-bert"; } \
  > "$WORK/config/embedding_models.toml"
export TRAINYARD_CONFIG_DIR="$WORK/config"
export TRAINYARD_DATASETS__DEFAULT_EMBEDDING_MODEL=tiny-bert
# Two workers share 2 cores: one encoder thread each (as benches/batch_scoring.sh); override freely.
export TRAINYARD_LOCAL_MODEL__THREADS="${TRAINYARD_LOCAL_MODEL__THREADS:-1}"
export TRAINYARD_SCORING__THREADS="${TRAINYARD_SCORING__THREADS:-1}"
"$BIN" migrate >"$WORK/logs/migrate.log" 2>&1 || { say "migrate failed:"; cat "$WORK/logs/migrate.log" >&2; exit 1; }

PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" serve --listen "127.0.0.1:$PORT" >"$WORK/logs/serve.log" 2>&1 & pids+=($!)
for w in w1 w2; do
  "$BIN" worker --queues dataset_build,embed,train,score,evaluate,review_rank --name "scale-$w" \
    >"$WORK/logs/$w.log" 2>&1 & pids+=($!)
done
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$PORT/api/v1/health" >/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { say "serve exited:"; tail -20 "$WORK/logs/serve.log" >&2; exit 1; }
  sleep 0.5
done
say "serve on 127.0.0.1:$PORT (pid ${pids[0]}), workers ${pids[1]} ${pids[2]}; logs in $WORK/logs"

python benches/scale/drive.py --n "$N" --port "$PORT" --db "$DB" --admin-url "$ADMIN_URL" \
  --corpus "$WORK/corpus.jsonl" --bin "$BIN" --out "$OUT" --logs "$WORK/logs" \
  --pids "serve=${pids[0]},w1=${pids[1]},w2=${pids[2]}"
