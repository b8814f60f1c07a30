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
VERSION="$(curl -fs "$TRAINYARD_URL/api/v1/models" | python3 -c 'import json,sys; print([m for m in json.load(sys.stdin) if m["name"]=="moderation"][0]["served_version"])')"
curl -fs "$TRAINYARD_URL/api/v1/models/moderation/versions/$VERSION" >"$LOGS/version.json"
echo "== what version $VERSION learned from (training split; a source missing under a label never annotated it)"
python3 - "$LOGS/version.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
for label, c in (v.get("label_coverage") or {}).items():
    per = ", ".join("%s %d+/%d-" % (s, x["positives"], x["negatives"]) for s, x in sorted(c["sources"].items()))
    print("  %-20s %5d positives, %5d negatives  (%s)" % (label, c["positives"], c["negatives"], per or "no source"))
PY
echo "== POST /batch (the second seed's shape; thresholds tuned on validation)"
# Each showcase text comes from a domain the labels were annotated on: reviews carry sentiment
# and spam (reviews are not spam), emails carry spam only, so no sentiment is shown for them.
curl -fs "$TRAINYARD_URL/batch" -H 'content-type: application/json' -d '{"texts": [
  "This is the best phone I have ever owned, the battery lasts for days.",
  "Terrible food and rude staff, we will never come back.",
  "The plot was thin but the acting was wonderful and I loved the ending.",
  "URGENT: you have won a $1,000,000 prize! Click the link now to claim your reward.",
  "Hi Bob, the meeting moved to Thursday at 10, see the attached agenda.",
  ""]}' >"$LOGS/batch.json"
python3 - "$LOGS/batch.json" "$LOGS/version.json" <<'PY'
import json, sys
body = json.load(open(sys.argv[1]))
coverage = json.load(open(sys.argv[2])).get("label_coverage") or {}
domains = ["reviews", "reviews", "reviews", "emails", "emails", "-"]
print("count:", body["count"])
for r, domain in zip(body["results"], domains):
    if r["error"]:
        print("- %r (%s): error: %s" % (r["text"][:60], domain, r["error"]))
        continue
    shown = []
    for label, score in r["predictions"].items():
        annotated = domain in coverage.get(label, {}).get("sources", {})
        if annotated:
            mark = "positive" if label in r["positive_labels"] else "negative"
            shown.append("%s %.3f (%s)" % (label, score, mark))
        else:
            shown.append("%s n/a (never annotated on %s)" % (label, domain))
    print("- %r [%s]: %s" % (r["text"][:70], domain, "; ".join(shown)))
PY
echo "== jobs"
"$BIN" jobs --limit 8
echo "== open Swagger UI at $TRAINYARD_URL/docs; training curves at the 'curves:' URL above"
if [ "${TRAINYARD_DEMO_KEEP:-0}" = "1" ]; then echo "== serving until Ctrl-C"; wait; fi
