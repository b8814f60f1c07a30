#!/usr/bin/env bash
#: Labelling at two corpus sizes: the cost of `POST /api/v1/labelling/next` and of an answer
#: through the public API (`serve`, auth off), per call, for a source of N1 and of N2 synthetic
#: documents, and the ratio between them (flat = the cost does not grow with the corpus).
#
#   bash benches/labelling.sh [N1] [N2] [BIN]      # defaults 2000 20000
#
# Per size: N documents of one source with a stored score of model `bench` v1 (written straight
# into a scratch database, no embedding or training), `overlap = 2`; then the first `next` (it
# ranks the source: `uncertain`, in the request), two annotators taking turns for 200 decisions
# each, and one more annotator after 1,000 documents at the front of the ranking were decided
# by two others (the scan skips them). Needs psql and the release binary.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
N1="${1:-2000}"
N2="${2:-20000}"
BIN="${3:-$CARGO_TARGET_DIR/release/trainyard}"
BASE_URL="${DATABASE_URL%/*}"
PORT="${PORT:-18398}"
WORK="$(mktemp -d)"
SERVE=""
trap '[ -n "$SERVE" ] && kill $SERVE 2>/dev/null; rm -rf "$WORK"' EXIT

run_size() {
  local n="$1" db="trainyard_bench_labelling_$1"
  export DATABASE_URL="$BASE_URL/$db"
  psql -q "$BASE_URL/postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  "$BIN" migrate >/dev/null
  python3 - "$n" "$WORK/docs.tsv" <<'PY'
import random, sys
n, path = int(sys.argv[1]), sys.argv[2]
rng = random.Random(11)
with open(path, "w") as f:
    for i in range(1, n + 1):
        f.write(f"bench\tb{i:08d}\tsynthetic message {i} {'offer' if rng.random() < 0.3 else 'hello'} {rng.random():.6f}\n")
PY
  psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" <<SQL
\copy documents (source, external_id, body) FROM '$WORK/docs.tsv'
INSERT INTO models (name) VALUES ('bench');
INSERT INTO model_versions (name, version, spec, embedding_model, thresholds, metrics, weights)
  VALUES ('bench', 1, '{"mode": "head", "task": "binary", "labels": ["spam"], "input_dim": 384,
          "hidden_size": 0, "dropout": 0.0, "max_tokens": 256}', 'all-MiniLM-L6-v2', '[0.5]', '{}', '');
INSERT INTO document_scores (model_name, version, document_id, checksum, scores)
  SELECT 'bench', 1, id, md5(body), ARRAY[random()]::real[] FROM documents;
INSERT INTO source_settings (source, overlap) VALUES ('bench', 2);
ANALYZE;
SQL
  "$BIN" serve --listen "127.0.0.1:$PORT" >"$WORK/serve-$n.log" 2>&1 &
  SERVE=$!
  for _ in $(seq 100); do curl -fs "127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.2; done
  python3 - "$n" "$PORT" "$DATABASE_URL" "$WORK/result-$n.json" <<'PY'
import json, statistics, subprocess, sys, time, urllib.request
n, port, url, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def call(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    start = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        answer = json.loads(r.read())
    return time.perf_counter() - start, answer
q = lambda who: {"model": "bench", "version": 1, "strategy": "uncertain", "source": "bench", "annotator": who}
first, page = call("/api/v1/labelling/next", q("ann"))
assert page["status"] == "ready", page
nexts, answers = [], []
for i in range(200):
    for who in ("ann", "bob"):
        t, page = call("/api/v1/labelling/next", q(who))
        nexts.append(t)
        doc = page["item"]["document_id"]
        t, _ = call("/api/v1/labelling/answers", {**q(who), "document_id": doc, "labels": {"spam": i % 3 == 0}})
        answers.append(t)
# 1,000 documents at the front of the ranking decided by two others: the scan skips them.
subprocess.run(["psql", "-qAt", url, "-c", """
INSERT INTO label_answers (queue, document_id, annotator, skipped, labels, annotated_at)
SELECT 'bench' || chr(31) || 'uncertain' || chr(31) || 'bench' || chr(31), i.document_id, w, false, '{}', now()
FROM review_ranking_items i CROSS JOIN (VALUES ('x1'), ('x2')) a(w)
WHERE i.ranking_id = (SELECT max(id) FROM review_rankings WHERE status = 'ready') AND i.position < 1400
ON CONFLICT DO NOTHING"""], check=True)
deep = []
for i in range(50):
    t, page = call("/api/v1/labelling/next", q("carol"))
    deep.append(t)
    call("/api/v1/labelling/answers", {**q("carol"), "document_id": page["item"]["document_id"], "labels": {"spam": False}})
ms = lambda xs: {"median_ms": round(statistics.median(xs) * 1000, 2), "p95_ms": round(sorted(xs)[int(len(xs) * 0.95)] * 1000, 2)}
json.dump({"documents": n, "first_next_s": round(first, 3), "next": ms(nexts), "answer": ms(answers),
           "next_after_1000_decided": ms(deep), "left": page["progress"]["left"]}, open(out, "w"))
PY
  kill $SERVE; wait $SERVE 2>/dev/null || true; SERVE=""
  [ -n "${KEEP:-}" ] || psql -q "$BASE_URL/postgres" -c "DROP DATABASE IF EXISTS $db" 2>/dev/null || true
}

run_size "$N1"
run_size "$N2"
python3 - "$WORK/result-$N1.json" "$WORK/result-$N2.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
print(f"labelling, 2 annotators then a third after 1,000 decided documents (median / p95 ms per call)")
print(f"{'':34}{a['documents']:>14,}{b['documents']:>14,}{'ratio':>9}")
print(f"{'first next (ranks the source), s':34}{a['first_next_s']:>14}{b['first_next_s']:>14}{b['first_next_s'] / a['first_next_s']:>9.2f}")
for key in ("next", "answer", "next_after_1000_decided"):
    for stat in ("median_ms", "p95_ms"):
        x, y = a[key][stat], b[key][stat]
        print(f"{key + ' ' + stat:34}{x:>14}{y:>14}{y / x:>9.2f}")
PY
