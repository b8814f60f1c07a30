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
echo "== importing $(wc -l < "$TRAINYARD_DATA_DIR/demo.jsonl") documents (reviews: sentiment, and not spam; emails: spam only)"
"$BIN" import "$TRAINYARD_DATA_DIR/demo.jsonl"
"$BIN" serve > "$LOGS/serve.log" 2>&1 & pids+=($!)
for i in 1 2; do
  # One embedding thread each: two worker processes share the two cores.
  TRAINYARD_LOCAL_MODEL__THREADS=1 TRAINYARD_SCORING__THREADS=1 TRAINYARD_TRAINING__THREADS=2 "$BIN" worker --queues dataset_build,embed,train,score,evaluate,review_rank --concurrency 1 --name "demo-$i" > "$LOGS/worker-$i.log" 2>&1 & pids+=($!)
done
for _ in $(seq 1 50); do curl -fs "$TRAINYARD_URL/health" >/dev/null && break; sleep 0.2; done
echo "== API at $TRAINYARD_URL (Swagger UI: $TRAINYARD_URL/docs), 2 workers; logs in $LOGS"
"$BIN" build-dataset --name "demo: spam + positive sentiment" --sources reviews,emails \
  --labels spam,positive_sentiment --type multi_label ${TRAINYARD_DEMO_FORCE:+--force-regenerate} \
  | tee "$LOGS/dataset.json"
DATASET="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$LOGS/dataset.json")"
echo "== training a multi-label head (spam / positive_sentiment, masked per source) on dataset $DATASET"
"$BIN" train --dataset "$DATASET" --model-name moderation --mode head --epochs 40 --seed 42 --promote
# Wait until this API process serves the version just promoted (on a rerun an older version
# is already loaded, and a request answered by it would show that version's scores).
model_field() { curl -fs "$TRAINYARD_URL/api/v1/models" | python3 -c 'import json,sys; print([m for m in json.load(sys.stdin) if m["name"]=="moderation"][0][sys.argv[1]])' "$1"; }
VERSION="$(model_field served_version)"
for _ in $(seq 1 300); do [ "$(model_field loaded_version)" = "$VERSION" ] && break; sleep 0.2; done
[ "$(model_field loaded_version)" = "$VERSION" ] || { echo "version $VERSION never loaded" >&2; exit 1; }
echo "== GET /health: $(curl -fs "$TRAINYARD_URL/health"), serving version $VERSION"
curl -fs "$TRAINYARD_URL/api/v1/models/moderation/versions/$VERSION" >"$LOGS/version.json"
echo "== what version $VERSION learned from: label coverage of its training split (positives+/negatives- per source)"
python3 - "$LOGS/version.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
coverage = v.get("label_coverage") or {}
sources = sorted({s for c in coverage.values() for s in c["sources"]})
print("  %-20s" % "label" + "".join("%-16s" % s for s in sources) + "all")
for label, c in coverage.items():
    cells = ["%d+ / %d-" % (c["sources"][s]["positives"], c["sources"][s]["negatives"])
             if s in c["sources"] else "not annotated" for s in sources]
    print("  %-20s" % label + "".join("%-16s" % x for x in cells) + "%d+ / %d-" % (c["positives"], c["negatives"]))
print("  not annotated = masked on that source during training: the model's score for that label")
print("  on that source's texts is an extrapolation, not a prediction it was trained or tested for.")
PY
echo "== POST /batch on the held-out test split (never trained on) and on texts written for this demo"
# Every test record is scored at the version's thresholds (tuned on validation) and compared
# with its label where its source annotated that label. A label counts as "in domain" for a
# text only when the text's source annotated it in training (label_coverage above).
python3 - "$TRAINYARD_URL" "$LOGS/version.json" "$LOGS/batch.json" <<'PY'
import json, sys, urllib.request
base, version = sys.argv[1], json.load(open(sys.argv[2]))
coverage = version.get("label_coverage") or {}
labels = version["spec"]["labels"]
threshold = dict(zip(labels, version["thresholds"]))

def call(path, body=None):
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)

test, offset = [], 0
while True:
    page = call("/api/v1/datasets/%s/records?split=test&limit=1000&offset=%d" % (version["dataset_id"], offset))
    test += page["items"]
    offset += len(page["items"])
    if not page["items"] or offset >= page["total"]:
        break
# Hand-written texts: the domain is the one whose style they imitate; they have no truth label.
written = [("reviews", "This is the best phone I have ever owned, the battery lasts for days."),
           ("reviews", "Terrible food and rude staff, we will never come back."),
           ("emails", "URGENT: you have won a $1,000,000 prize! Click the link now to claim your reward."),
           ("emails", "Hi Bob, the meeting moved to Thursday at 10, see the attached agenda."),
           (None, "")]
texts = [r["text"] for r in test] + [t for _, t in written]
results = []
for i in range(0, len(texts), 1000):
    body = call("/batch", {"texts": texts[i:i + 1000]})
    assert body["count"] == len(texts[i:i + 1000]), body["count"]
    results += body["results"]
json.dump(results, open(sys.argv[3], "w"))

def in_domain(source):
    return [l for l in labels if source in coverage.get(l, {}).get("sources", {})]

print("  %d test records; a text is positive for a label when its score >= the label's threshold (%s)"
      % (len(test), ", ".join("%s %.3f" % kv for kv in threshold.items())))
print("  %-20s %-8s %7s %6s %8s %9s %6s" % ("label", "source", "records", "true+", "flagged+", "precision", "recall"))
for label in labels:
    for source in sorted({r["source"] for r in test}):
        rows = [(r, p) for r, p in zip(test, results) if r["source"] == source]
        flagged = sum(label in p["positive_labels"] for _, p in rows)
        if label not in in_domain(source):
            print("  %-20s %-8s %7d %6s %8d   out of domain: %s never annotated %s, so these %d flags are"
                  " extrapolations with no truth to check" % (label, source, len(rows), "-", flagged, source, label, flagged))
            continue
        known = [(r["labels"][label], label in p["positive_labels"]) for r, p in rows if r["labels"].get(label) is not None]
        tp = sum(t == 1 and f for t, f in known)
        pos = sum(t == 1 for t, _ in known)
        prec = "%.3f" % (tp / flagged) if flagged else "-"
        rec = "%.3f" % (tp / pos) if pos else "-"
        note = "" if pos else "   (no true positives: %d of %d flagged = false positives)" % (flagged, len(known))
        print("  %-20s %-8s %7d %6d %8d %9s %6s%s" % (label, source, len(known), pos, flagged, prec, rec, note))

def show(head, source, text, result, truth):
    print("- [%s] %r" % (head, text.replace("\n", " / ")[:80]))
    if result["error"]:
        print("      error: %s (a /batch answers every text; a bad one carries its own error)" % result["error"])
        return
    parts = []
    for label in labels:
        score = result["predictions"][label]
        if label not in in_domain(source):
            parts.append("%s out of domain (%s never annotated it; its %.3f is an extrapolation)" % (label, source, score))
            continue
        verdict = "yes" if label in result["positive_labels"] else "no"
        t = truth.get(label)
        parts.append("%s %.3f %s %.3f -> %s%s" % (label, score, ">=" if verdict == "yes" else "<", threshold[label], verdict,
                                                  "" if t is None else ", truth %s" % ("yes" if t == 1 else "no")))
    print("      " + " | ".join(parts))

print("== examples: the first test record of each kind (not picked for being right), then the written texts")
picks = [("reviews", "positive_sentiment", 1), ("reviews", "positive_sentiment", 0), ("emails", "spam", 1), ("emails", "spam", 0)]
for source, label, value in picks:
    for r, p in zip(test, results):
        if r["source"] == source and r["labels"].get(label) == value:
            show("%s, test record %s; in domain: %s" % (source, r["external_id"], ", ".join(in_domain(source))),
                 source, r["text"], p, r["labels"])
            break
for (source, text), p in zip(written, results[len(test):]):
    if source is None:
        show("empty text", None, text, p, {})
    else:
        show("written for the demo in the style of %s; in domain: %s" % (source, ", ".join(in_domain(source))),
             source, text, p, {})
PY
echo "== batch scoring on the workers (a score job fanned out in chunks): the test split with version $VERSION"
# Scores are stored per (model, version, document): a rerun of the demo reuses them (scored 0).
"$BIN" score --model moderation --version "$VERSION" --dataset "$DATASET" --split test \
  --output "$LOGS/test_scores.parquet"
echo "== exporting version $VERSION for other tools (GET /api/v1/models/moderation/versions/$VERSION/export)"
rm -rf "$LOGS/export"
"$BIN" export --model moderation --version "$VERSION" --dir "$LOGS/export"
python3 - "$LOGS/export/moderation-v$VERSION" <<'PY'
import json, os, sys
folder = sys.argv[1]
meta = json.load(open(os.path.join(folder, "trainyard.json")))
for name in sorted(os.listdir(folder)):
    print("  %-20s %10d bytes" % (name, os.path.getsize(os.path.join(folder, name))))
print("  a %s version: labels %s, thresholds %s, %s; it reads %s embeddings (%d dimensions, %s pooling%s)"
      % (meta["mode"], meta["labels"], [round(t, 3) for t in meta["thresholds"]], meta["activation"],
         meta["embedding_model"]["name"], meta["embedding_model"]["dimensions"], meta["pooling"]["mode"],
         " + L2" if meta["pooling"]["normalize"] else ""))
print("  README.md in the folder has the Python (transformers + safetensors) that reproduces the scores")
PY
echo "== what to label next: annotations that out-of-fold predictions contradict (GET /api/v1/review-queue?strategy=suspect_label)"
# The first request enqueues a review_rank job (202, status computing); the ranking is kept.
for _ in $(seq 600); do
  code=$(curl -s -o "$LOGS/review_suspects.json" -w '%{http_code}' \
    "$TRAINYARD_URL/api/v1/review-queue?model=moderation&strategy=suspect_label&source=emails&label=spam&limit=5")
  [ "$code" = 200 ] && break
  [ "$code" = 202 ] || { echo "review queue answered $code"; cat "$LOGS/review_suspects.json"; exit 1; }
  sleep 0.5
done
curl -fs "$TRAINYARD_URL/api/v1/review-queue?model=moderation&strategy=uncovered&source=emails&limit=1" \
  >"$LOGS/review_uncovered.json"
python3 - "$LOGS/review_suspects.json" "$LOGS/review_uncovered.json" <<'PY'
import json, sys
q = json.load(open(sys.argv[1]))
c = q["counts"]
print("  emails with a spam consensus and an embedding: %d ranked (%s without an embedding)"
      % (q["total"], c.get("without_embedding", "?")))
print("  5-fold logistic regressions on the embeddings; the first 5 to send back to annotators:")
for item in q["items"]:
    text = " ".join(item["text"].split())
    print("   - %s: %s" % (item["external_id"], item["explanation"]))
    print("     %s" % (text[:110] + ("..." if len(text) > 110 else "")))
u = json.load(open(sys.argv[2]))
print("  labels nobody ever annotated on emails (masked in training): %s; %d (label, email) pairs queued for a first look"
      % (", ".join(u["uncovered_labels"]) or "none", u["total"]))
PY
echo "== jobs"
"$BIN" jobs --limit 8
echo "== open Swagger UI at $TRAINYARD_URL/docs; training curves at the 'curves:' URL above"
if [ "${TRAINYARD_DEMO_KEEP:-0}" = "1" ]; then echo "== serving until Ctrl-C"; wait; fi
