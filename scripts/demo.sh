#!/usr/bin/env bash
# README command 1: set up, fetch the real demo data, import it, run the API and a pool of two
# worker processes, build a multi-label dataset with the local model, show progress and stats.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TRAINYARD_ROOT"
bash scripts/setup.sh
bash scripts/fetch_demo_data.sh
BIN="$CARGO_TARGET_DIR/release/trainyard"
PORT="${TRAINYARD_DEMO_PORT:-8322}"
export TRAINYARD_SERVER__LISTEN="127.0.0.1:$PORT" TRAINYARD_URL="http://127.0.0.1:$PORT"
LOGS="$TRAINYARD_DATA_DIR/demo-logs"; mkdir -p "$LOGS"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$BIN" migrate
echo "== importing $(wc -l < "$TRAINYARD_DATA_DIR/demo.jsonl") documents (reviews: sentiment, emails: spam)"
"$BIN" import "$TRAINYARD_DATA_DIR/demo.jsonl"
"$BIN" serve > "$LOGS/serve.log" 2>&1 & pids+=($!)
for i in 1 2; do
  # One embedding thread each: two worker processes share the two cores.
  TRAINYARD_LOCAL_MODEL__THREADS=1 TRAINYARD_TRAINING__THREADS=2 "$BIN" worker --queues dataset_build,embed,train --concurrency 1 --name "demo-$i" > "$LOGS/worker-$i.log" 2>&1 & pids+=($!)
done
for _ in $(seq 1 50); do curl -fs "$TRAINYARD_URL/health" >/dev/null && break; sleep 0.2; done
echo "== API at $TRAINYARD_URL (Swagger UI: $TRAINYARD_URL/docs), 2 workers; logs in $LOGS"
"$BIN" build-dataset --name "demo: spam + positive sentiment" --sources reviews,emails \
  --labels spam,positive_sentiment --type multi_label ${TRAINYARD_DEMO_FORCE:+--force-regenerate} \
  | tee "$LOGS/dataset.json"
DATASET="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$LOGS/dataset.json")"
echo "== training a multi-label head (spam / positive_sentiment, masked per source) on dataset $DATASET"
"$BIN" train --dataset "$DATASET" --model-name moderation --mode head --epochs 40 --seed 42 --promote
for _ in $(seq 1 100); do
  curl -fs "$TRAINYARD_URL/health" | grep -q '"model":"moderation"' && break; sleep 0.2
done
echo "== GET /health: $(curl -fs "$TRAINYARD_URL/health")"
echo "== POST /batch (the second seed's shape; thresholds tuned on validation)"
curl -fs "$TRAINYARD_URL/batch" -H 'content-type: application/json' -d '{"texts": [
  "This is the best phone I have ever owned, the battery lasts for days.",
  "Terrible food and rude staff, we will never come back.",
  "URGENT: you have won a $1,000,000 prize! Click the link now to claim your reward.",
  "Hi Bob, the meeting moved to Thursday at 10, see the attached agenda.",
  ""]}' | python3 -c '
import json, sys
body = json.load(sys.stdin)
print("count:", body["count"])
for r in body["results"]:
    scores = ", ".join("%s %.3f" % kv for kv in r["predictions"].items())
    print("- %r: positive %s [%s] error=%s" % (r["text"][:70], r["positive_labels"], scores, r["error"]))
'
echo "== jobs"
"$BIN" jobs --limit 8
echo "== open Swagger UI at $TRAINYARD_URL/docs; training curves at the 'curves:' URL above"
if [ "${TRAINYARD_DEMO_KEEP:-0}" = "1" ]; then echo "== serving until Ctrl-C"; wait; fi
