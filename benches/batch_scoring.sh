#!/usr/bin/env bash
# Benchmark: batch scoring of a whole source, trainyard's scoring job vs the Python peer
# (benches/batch_scoring_peer.py: psycopg + sentence-transformers encode() + the same MLP head,
# scores COPYed back), on the same database and the same N documents, side by side.
#
#   bash benches/batch_scoring.sh
#
# Setup (not timed): a fresh database `trainyard_bench_scoring` on the shared Postgres,
# `trainyard migrate`, N deterministic sentences (benches/make_sentences.py, seed 42) imported
# as documents of source `bench`, TRAIN_DOCS other sentences (seed 7) as source `bench_train`
# with the label `positive` annotated by `bench`; `serve` and WORKERS worker processes
# (`--concurrency 1` each, every queue); a binary dataset over bench_train and a head run of
# model `bench-scorer` with auto_promote.
# Timed, trainyard: POST /api/v1/scoring-jobs {"model": "bench-scorer", "selection":
# {"sources": ["bench"]}}, then GET /api/v1/scoring-jobs/{id} every 0.5 s until `done`
# (`failed`/`cancelled` abort): end to end from the POST to the poll that sees `done`.
# Then serve and the workers are stopped and the peer scores the same source with
# PEER_THREADS torch threads into `peer_document_scores`; its own clock (see its docstring).
#
# Env: N (100000), WORKERS (2), SCORING_THREADS (1: scoring replicas per worker process, each
# single-threaded, so WORKERS x SCORING_THREADS threads in all), PEER_THREADS (2), PEER_BATCH
# (32, encode()'s default), TRAIN_DOCS (300), PORT (18331), SCORING_TIMEOUT_S (7200),
# SKIP_BUILD=1 uses the binary already built, KEEP_DB=1 keeps the database afterwards,
# TRAINYARD_TOKEN is sent as a bearer token when set (auth is off on loopback by default).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"

N="${N:-100000}" WORKERS="${WORKERS:-2}" SCORING_THREADS="${SCORING_THREADS:-1}"
PEER_THREADS="${PEER_THREADS:-2}" PEER_BATCH="${PEER_BATCH:-32}" TRAIN_DOCS="${TRAIN_DOCS:-300}"
PORT="${PORT:-18331}" SCORING_TIMEOUT_S="${SCORING_TIMEOUT_S:-7200}"
MODEL=bench-scorer
DB=trainyard_bench_scoring
ADMIN=postgres://postgres@127.0.0.1:5432/postgres
BASE="http://127.0.0.1:$PORT"
export TRAINYARD_URL="$BASE"

echo "batch scoring benchmark: $(date -u), nproc $(nproc), N $N, trainyard WORKERS $WORKERS x concurrency 1" \
  "x scoring.threads $SCORING_THREADS, peer $PEER_THREADS torch threads, encode batch $PEER_BATCH"

python -c "import psycopg" 2>/dev/null \
  || "$TRAINYARD_VENV/bin/pip" install -q --disable-pip-version-check 'psycopg[binary]'
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/trainyard"
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/trainyard_scoring_bench.XXXXXX")"
pids=()
stop_all() {
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in ${pids[@]+"${pids[@]}"}; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
cleanup() {
  stop_all
  if [ "${KEEP_DB:-0}" = 1 ]; then
    echo "database kept: postgres://postgres@127.0.0.1:5432/$DB" >&2
  else
    psql -q "$ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  echo "logs: $WORK" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A small API client (stdlib only; one process for a whole wait, so polling costs no CPU):
#   api run PATH BODY_JSON OK_STATUSES FAIL_STATUSES TIMEOUT_S INTERVAL_S
# POSTs BODY to PATH, reads `id` (and `status`) from the answer, then GETs PATH/{id} every
# INTERVAL_S until `status` is one of OK_STATUSES (comma-separated); prints one JSON line
# {"id", "seconds" (POST to the poll that saw the status), "object" (the last answer)}.
api() {
  python - "$BASE" "$@" <<'PY'
import json, os, sys, time, urllib.error, urllib.request

base, mode, path, body, ok, fail, timeout, interval = sys.argv[1:9]
assert mode == "run", mode
ok, fail = set(ok.split(",")), set(fail.split(","))
timeout, interval = float(timeout), float(interval)
headers = {"Content-Type": "application/json"}
if os.environ.get("TRAINYARD_TOKEN"):
    headers["Authorization"] = "Bearer " + os.environ["TRAINYARD_TOKEN"]

def call(method, url, data=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {url}: HTTP {e.code}: {e.read()[:500].decode('utf-8', 'replace')}")

t0 = time.perf_counter()
obj = call("POST", base + path, body.encode())
if not isinstance(obj, dict) or "id" not in obj:
    sys.exit(f"POST {path}: no id in the answer: {json.dumps(obj)[:500]}")
oid = obj["id"]
last_note = t0
while obj.get("status") not in ok:
    if obj.get("status") in fail:
        sys.exit(f"{path}/{oid} ended {obj.get('status')}: {json.dumps(obj)[:1000]}")
    now = time.perf_counter()
    if now - t0 > timeout:
        sys.exit(f"{path}/{oid} still {obj.get('status')} after {timeout:.0f} s")
    if now - last_note >= 10:
        last_note = now
        extra = {k: obj[k] for k in ("progress", "chunks_done", "chunks_total", "scored", "documents_total") if k in obj}
        print(f"  {path}/{oid}: {obj.get('status')} after {now - t0:.0f} s {json.dumps(extra)}", file=sys.stderr)
    time.sleep(interval)
    obj = call("GET", f"{base}{path}/{oid}")
print(json.dumps({"id": oid, "seconds": time.perf_counter() - t0, "object": obj}))
PY
}
field() { python -c 'import json,sys; o=json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, {"o": o}))' "$1" "$2"; }

# 1. The database and the documents.
psql -q "$ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
"$BIN" migrate >"$WORK/migrate.log" 2>&1 || { cat "$WORK/migrate.log" >&2; exit 1; }
mkdir -p "$TRAINYARD_DATA_DIR"
SENTENCES="$TRAINYARD_DATA_DIR/bench_sentences_$N.txt"   # the same file as embed_throughput.sh's
[ -s "$SENTENCES" ] || python benches/make_sentences.py --n "$N" --seed 42 --out "$SENTENCES" 2>/dev/null
python benches/make_sentences.py --n "$TRAIN_DOCS" --seed 7 --out "$WORK/train_sentences.txt" 2>/dev/null
python - "$SENTENCES" "$WORK/train_sentences.txt" "$WORK/import.jsonl" <<'PY'
import json, sys
bench, train, out = sys.argv[1:4]
# A learnable-enough label for the training set: one of a few "positive" words present.
POSITIVE = {"happy", "love", "good", "beautiful", "smile", "warm", "friend", "laugh", "pretty", "best"}
with open(out, "w", encoding="utf-8") as f:
    for i, line in enumerate(open(train, encoding="utf-8")):
        text = line.rstrip("\n")
        words = {w.strip(".,?!").lower() for w in text.split()}
        f.write(json.dumps({"source": "bench_train", "external_id": f"t{i:06d}", "text": text,
                            "annotations": [{"annotator": "bench", "labels": {"positive": bool(words & POSITIVE)}}]}) + "\n")
    for i, line in enumerate(open(bench, encoding="utf-8")):
        f.write(json.dumps({"source": "bench", "external_id": f"s{i:07d}", "text": line.rstrip("\n")}) + "\n")
PY
"$BIN" import "$WORK/import.jsonl" 2>"$WORK/import.err" | tail -n1 || { cat "$WORK/import.err" >&2; exit 1; }
rm -f "$WORK/import.jsonl"
count=$(psql -tA "$DATABASE_URL" -c "SELECT count(*) FROM documents WHERE source = 'bench'")
[ "$count" = "$N" ] || { echo "source bench holds $count documents, expected $N" >&2; exit 1; }

# 2. serve and the workers. Each worker scores with SCORING_THREADS single-threaded replicas.
export RUST_LOG="${RUST_LOG:-warn}" TRAINYARD_SCORING__THREADS="$SCORING_THREADS" \
  TRAINYARD_LOCAL_MODEL__THREADS=1 TRAINYARD_TRAINING__THREADS=1 TRAINYARD_INFERENCE__THREADS=1
for _ in $(seq 1 75); do   # a server stopped just before may still hold the port
  ss -ltn "( sport = :$PORT )" | grep -q LISTEN || break; sleep 0.2
done
"$BIN" serve --listen "127.0.0.1:$PORT" >"$WORK/serve.log" 2>&1 &
pids+=($!)
for i in $(seq 1 "$WORKERS"); do
  "$BIN" worker --queues dataset_build,embed,train,score,evaluate --concurrency 1 --name "bench-scoring-$i" \
    >"$WORK/worker-$i.log" 2>&1 &
  pids+=($!)
done
up=0
for _ in $(seq 1 150); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$BASE/api/v1/health" || true)
  [ "$code" != "000" ] && { up=1; break; }
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "a trainyard process exited; logs in $WORK" >&2; exit 1; }; done
  sleep 0.2
done
[ "$up" = 1 ] || { echo "serve does not answer on $BASE; log $WORK/serve.log" >&2; exit 1; }

# 3. A model version to score with.
ds=$(api run /api/v1/datasets \
  '{"name": "bench-scoring-train", "selection": {"sources": ["bench_train"]}, "label_schema": {"type": "binary", "labels": ["positive"]}}' \
  ready failed,cancelled 1800 0.5)
DATASET=$(field "$ds" 'o["id"]')
echo "dataset $DATASET ready ($(field "$ds" 'round(o["seconds"], 1)') s)"
run=$(api run /api/v1/training-runs \
  "{\"dataset_id\": \"$DATASET\", \"model_name\": \"$MODEL\", \"mode\": \"head\", \"auto_promote\": true}" \
  succeeded failed,cancelled 3600 0.5)
echo "training run $(field "$run" 'o["id"]') succeeded: $MODEL version $(field "$run" 'o["object"].get("model_version")') ($(field "$run" 'round(o["seconds"], 1)') s)"

# 4. Timed: trainyard's scoring job, POST to done.
echo "trainyard: scoring source bench with $MODEL ($WORKERS worker processes on $(nproc) cores)..." >&2
job=$(api run /api/v1/scoring-jobs "{\"model\": \"$MODEL\", \"selection\": {\"sources\": [\"bench\"]}}" \
  done failed,cancelled "$SCORING_TIMEOUT_S" 0.5)
echo "$job" >"$WORK/scoring_job.json"
stored=$(psql -tA "$DATABASE_URL" -c "SELECT count(*) FROM document_scores s JOIN documents d ON d.id = s.document_id
  WHERE d.source = 'bench' AND s.model_name = '$MODEL'" 2>/dev/null || echo "?")
stop_all

# 5. The peer, on the same database and source, alone on the machine.
echo "peer: sentence-transformers, $PEER_THREADS threads..." >&2
python benches/batch_scoring_peer.py --database-url "$DATABASE_URL" --source bench \
  --threads "$PEER_THREADS" --batch-size "$PEER_BATCH" --labels 1 >"$WORK/peer.json" 2>"$WORK/peer.log" \
  || { tail -n 20 "$WORK/peer.log" >&2; exit 1; }

python - "$WORK/scoring_job.json" "$WORK/peer.json" "$N" "$WORKERS" "$SCORING_THREADS" "$PEER_THREADS" \
  "$PEER_BATCH" "$(nproc)" "$stored" <<'PY'
import json, sys
job, peer = json.load(open(sys.argv[1])), json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
n, workers, sthreads, pthreads, pbatch, cores, stored = sys.argv[3:10]
obj = job["object"]
ty_texts = obj.get("scored", int(n))
ty_s = job["seconds"]
ty_rate = ty_texts / ty_s
print(f"batch scoring of source bench, N = {n}, {cores} cores")
print(f"  trainyard: {workers} worker processes x concurrency 1 x {sthreads} scoring replica(s), one thread each")
print(f"  peer     : sentence-transformers encode(batch_size={pbatch}) + torch head, {pthreads} torch threads, COPY out")
print(f"  {'side':<11}{'texts':>9}{'seconds':>10}{'texts/s':>10}")
print(f"  {'trainyard':<11}{ty_texts:9d}{ty_s:10.1f}{ty_rate:10.1f}   (POST /api/v1/scoring-jobs to done)")
print(f"  {'peer':<11}{peer['texts']:9d}{peer['seconds']:10.1f}{peer['texts_per_second']:10.1f}"
      f"   (read {peer['read_s']:.1f} s, load {peer['load_s']:.1f} s, encode+head {peer['encode_s']:.1f} s, write {peer['write_s']:.1f} s)")
print(f"  ratio trainyard/peer: {ty_rate / peer['texts_per_second']:.2f}x (goal >= 1.2x)")
notes = []
if obj.get("reused"):
    notes.append(f"{obj['reused']} scores were reused, not computed")
if str(ty_texts) != stored:
    notes.append(f"document_scores holds {stored} rows for source bench, the job says {ty_texts} scored")
if ty_texts != peer["texts"]:
    notes.append(f"the two sides scored different counts ({ty_texts} vs {peer['texts']})")
for note in notes:
    print(f"  WARNING: {note}")
PY
