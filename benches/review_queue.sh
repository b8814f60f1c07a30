#!/usr/bin/env bash
#: The review queue at N synthetic documents: first and second page of each strategy through
#: the public API (`serve --workers 1`), the stored ranking's size, and EXPLAIN of a page.
#
#   bash benches/review_queue.sh N [BIN]
#
# The corpus is written straight into a scratch database (no embedding or training): N
# documents of one source, 30% annotated by two annotators (one in ten of those disagreeing),
# a stored score of version 1 of model `bench` for every document, and for annotated documents
# a 384-dimension vector near one of two centres (the label's), so `suspect_label` has
# something to fit. Needs psql and the release binary.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
N="${1:?usage: benches/review_queue.sh N [BIN]}"
BIN="${2:-$CARGO_TARGET_DIR/release/trainyard}"
DB="trainyard_bench_review_$N"
BASE_URL="${DATABASE_URL%/*}"
export DATABASE_URL="$BASE_URL/$DB"
PORT="${PORT:-18399}"
WORK="$(mktemp -d)"
trap 'kill $SERVE 2>/dev/null || true; rm -rf "$WORK"' EXIT

psql -q "$BASE_URL/postgres" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
"$BIN" migrate >/dev/null

python3 - "$N" "$WORK" <<'PY'
import random, struct, sys
n, work = int(sys.argv[1]), sys.argv[2]
rng = random.Random(7)
dims = 384
centre = [[rng.gauss(0, 1) for _ in range(dims)] for _ in range(2)]
with open(f"{work}/docs.tsv", "w") as docs, open(f"{work}/anns.tsv", "w") as anns, \
     open(f"{work}/vecs.tsv", "w") as vecs:
    for i in range(1, n + 1):
        spam = rng.random() < 0.3
        docs.write(f"bench\tb{i:08d}\tsynthetic document {i} {'offer' if spam else 'hello'} {rng.random():.6f}\n")
        if rng.random() < 0.3:
            given = spam if rng.random() > 0.05 else not spam
            second = given if rng.random() > 0.1 else not given
            for who, value in (("ann", given), ("bob", second)):
                anns.write(f"{i}\t{who}\tspam\t{'t' if value else 'f'}\t2026-12-01T10:00:00Z\n")
            c = centre[int(spam)]
            v = [x + rng.gauss(0, 2.0) for x in c]
            norm = sum(x * x for x in v) ** 0.5
            vecs.write(f"{i}\t\\\\x{struct.pack('<%df' % dims, *[x / norm for x in v]).hex()}\n")
PY

psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" <<SQL
\copy documents (source, external_id, body) FROM '$WORK/docs.tsv'
\copy annotations (document_id, annotator, label, value, annotated_at) FROM '$WORK/anns.tsv'
CREATE TEMP TABLE v (document_id BIGINT, vector BYTEA);
\copy v FROM '$WORK/vecs.tsv'
INSERT INTO embeddings (model, dimensions, checksum, vector)
  SELECT DISTINCT ON (md5(d.body)) 'all-MiniLM-L6-v2', 384, md5(d.body), v.vector
  FROM v JOIN documents d ON d.id = v.document_id;
INSERT INTO models (name) VALUES ('bench');
INSERT INTO model_versions (name, version, spec, embedding_model, thresholds, metrics, weights)
  VALUES ('bench', 1, '{"mode": "head", "task": "binary", "labels": ["spam"], "input_dim": 384,
          "hidden_size": 0, "dropout": 0.0, "max_tokens": 256}', 'all-MiniLM-L6-v2', '[0.5]', '{}', '');
INSERT INTO document_scores (model_name, version, document_id, checksum, scores)
  SELECT 'bench', 1, id, md5(body), ARRAY[random()]::real[] FROM documents;
SQL

TRAINYARD_TRAINING__THREADS=1 "$BIN" serve --listen "127.0.0.1:$PORT" --workers 1 >"$WORK/serve.log" 2>&1 &
SERVE=$!
for _ in $(seq 100); do curl -fs "127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.2; done

printf 'documents %s, database %s\n' "$N" "$(psql -tAq "$DATABASE_URL" -c "SELECT pg_size_pretty(pg_database_size('$DB'))")"
printf '%-14s %-9s %10s %10s %10s %8s\n' strategy request seconds status total items
ask() { # strategy label offset
  local url="127.0.0.1:$PORT/api/v1/review-queue?model=bench&version=1&source=bench&strategy=$1&limit=50&offset=$3"
  local start end code
  start=$(date +%s.%N)
  code=$(curl -s -o "$WORK/page.json" -w '%{http_code}' "$url")
  end=$(date +%s.%N)
  printf '%-14s %-9s %10.3f %10s %10s %8s\n' "$1" "$2" "$(echo "$end - $start" | bc)" "$code" \
    "$(python3 -c "import json; print(json.load(open('$WORK/page.json')).get('total'))")" \
    "$(python3 -c "import json; print(len(json.load(open('$WORK/page.json')).get('items', [])))")"
  LAST_CODE=$code
}
for s in uncertain disagreement uncovered; do
  ask "$s" first 0
  ask "$s" second 0
  ask "$s" deep "$((N / 4))"
done
printf 'peak RSS of serve after the other strategies: %s\n' "$(grep VmHWM /proc/$SERVE/status | awk '{print $2, $3}')"
start=$(date +%s.%N)
ask suspect_label first 0
while [ "$LAST_CODE" = 202 ]; do sleep 0.5; ask suspect_label poll 0 >/dev/null; done
printf '%-14s %-9s %10.3f  (job: enqueue to ready)\n' suspect_label job "$(echo "$(date +%s.%N) - $start" | bc)"
ask suspect_label second 0
ask suspect_label deep "$((N / 20))"
printf 'peak RSS of serve after suspect_label (its fits run in the in-process worker): %s\n' "$(grep VmHWM /proc/$SERVE/status | awk '{print $2, $3}')"
psql -tAq "$DATABASE_URL" -c "SELECT strategy, total, pg_size_pretty(pg_total_relation_size('review_ranking_items')) FROM review_rankings WHERE status = 'ready' ORDER BY 1"
psql -q "$DATABASE_URL" <<'SQL'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT i.document_id, i.reason, i.explanation, d.source, d.external_id, d.title, d.description, d.tags, d.body
FROM (SELECT position, document_id, reason, explanation FROM review_ranking_items
      WHERE ranking_id = (SELECT id FROM review_rankings WHERE strategy = 'uncertain' AND status = 'ready')
        AND position >= 1000 AND position < 1000 + 50) i
CROSS JOIN LATERAL (SELECT source, external_id, title, description, tags, body
                    FROM documents WHERE id = i.document_id LIMIT 1) d
ORDER BY i.position;
SQL
grep "review ranking computed\|suspect_label fitted" "$WORK/serve.log" | sed 's/^.*INFO //' | tail -8 || true
[ -n "${KEEP:-}" ] || psql -q "$BASE_URL/postgres" -c "DROP DATABASE IF EXISTS $DB" 2>/dev/null || true
