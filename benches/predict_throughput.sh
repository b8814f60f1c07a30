#!/usr/bin/env bash
# Benchmark 4: HTTP inference, trainyard vs the old Python server (benches/predict_peer.py, same
# MiniLM + MLP head, aiohttp, 1 model thread, PEER_THREADS torch threads) in the same run, with
# hey: after a WARMUP_S warm-up, DURATION_S at PREDICT_CONCURRENCY against POST /predict (one
# ~25-word sentence) and DURATION_S at BATCH_CONCURRENCY against POST /batch (BATCH_SIZE
# different sentences per request). Prints req/s, texts/s, p50/p99, non-2xx and errors, and the
# ratios trainyard/peer. Defaults: 3 s, 20 s, 16, 4, 16, PEER_THREADS 2, PEER_PORT 8400.
# PEER_BATCH_MODE=one_by_one makes the peer's /batch run one text per forward pass, as the
# second seed did (default `together`: the whole batch in one pass).
#
#   bash benches/predict_throughput.sh [--no-setup]
#
# trainyard is reached at TRAINYARD_URL (default http://127.0.0.1:8322; paths PREDICT_PATH,
# BATCH_PATH, HEALTH_PATH default /predict, /batch, /health). With --no-setup it must already
# serve a promoted model. Otherwise benches/predict_setup.sh, if present, is run first: it gets
# TRAINYARD_URL and PREDICT_SETUP_PIDFILE in its environment, must return once trainyard serves
# a promoted model, and writes to $PREDICT_SETUP_PIDFILE the pids (one a line) of anything it
# started that must be stopped when this script exits.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"

SETUP=1
for arg in "$@"; do
  case "$arg" in
    --no-setup) SETUP=0 ;;
    *) echo "usage: $0 [--no-setup]" >&2; exit 2 ;;
  esac
done
TRAINYARD_URL="${TRAINYARD_URL:-http://127.0.0.1:8322}"
TRAINYARD_URL="${TRAINYARD_URL%/}"
PREDICT_PATH="${PREDICT_PATH:-/predict}" BATCH_PATH="${BATCH_PATH:-/batch}" HEALTH_PATH="${HEALTH_PATH:-/health}"
WARMUP_S="${WARMUP_S:-3}" DURATION_S="${DURATION_S:-20}"
PREDICT_CONCURRENCY="${PREDICT_CONCURRENCY:-16}" BATCH_CONCURRENCY="${BATCH_CONCURRENCY:-4}" BATCH_SIZE="${BATCH_SIZE:-16}"
PEER_PORT="${PEER_PORT:-8400}" PEER_THREADS="${PEER_THREADS:-2}"
PEER_URL="http://127.0.0.1:$PEER_PORT"
export TRAINYARD_URL

# hey (Debian bookworm packages it; wrk is not needed).
if ! command -v hey >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q hey >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q hey >/dev/null; }
fi
python -c "import aiohttp" 2>/dev/null || "$TRAINYARD_VENV/bin/pip" install -q --disable-pip-version-check aiohttp

WORK="$(mktemp -d "${TMPDIR:-/tmp}/trainyard_predict_bench.XXXXXX")"
export PREDICT_SETUP_PIDFILE="$WORK/setup.pids"
PEER_PID=""
cleanup() {
  if [ -n "$PEER_PID" ] && kill "$PEER_PID" 2>/dev/null; then
    # Wait for it to be gone (its port free for the next run); SIGKILL after 10 s.
    for _ in $(seq 1 100); do kill -0 "$PEER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PEER_PID" 2>/dev/null || true
  fi
  if [ -s "$PREDICT_SETUP_PIDFILE" ]; then
    while read -r pid; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done <"$PREDICT_SETUP_PIDFILE"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_healthy() { # URL NAME SECONDS
  for _ in $(seq 1 "$3"); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 1
  done
  echo "$2 does not answer GET $1 after $3 s" >&2
  return 1
}

# trainyard
if [ "$SETUP" = 1 ]; then
  if [ -f benches/predict_setup.sh ]; then
    bash benches/predict_setup.sh
  else
    echo "benches/predict_setup.sh not found: assuming trainyard already serves at $TRAINYARD_URL" >&2
  fi
fi
wait_healthy "$TRAINYARD_URL$HEALTH_PATH" "trainyard" 60

# Python peer
if curl -s -o /dev/null "$PEER_URL/health"; then
  echo "port $PEER_PORT is already in use; set PEER_PORT" >&2
  exit 1
fi
python benches/predict_peer.py --port "$PEER_PORT" --threads "$PEER_THREADS" \
  --batch-mode "${PEER_BATCH_MODE:-together}" >"$WORK/peer.log" 2>&1 &
PEER_PID=$!
wait_healthy "$PEER_URL/health" "the Python peer" 120 || { cat "$WORK/peer.log" >&2; exit 1; }

# Request bodies: one realistic ~25-word sentence for /predict, BATCH_SIZE different ones for /batch.
python - "$WORK" "$BATCH_SIZE" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
sentences = [
    "I ordered the blue jacket two weeks ago and it still has not arrived, and nobody from customer support has answered any of my three emails so far.",
    "Congratulations! You have been selected to receive a free cruise for two, just click the link below and enter your card details to claim your prize today.",
    "The new update made the app much faster on my old phone, and I really like how the dark mode looks in the evening when I read.",
    "Honestly the worst movie I have seen this year, the plot made no sense and the actors looked bored in almost every single scene of it.",
    "Make money from home in only two hours a day, no experience needed, thousands of people are already earning more than their old salary with us.",
    "We stayed at this small hotel for three nights and the staff were friendly, the room was clean and breakfast was better than we expected.",
    "Can anyone tell me whether the train from the airport to the city centre still runs after midnight on weekends, or should I book a taxi?",
    "This recipe is a keeper: the bread came out soft inside with a crunchy crust, and my kids asked for a second loaf the very next day.",
    "URGENT: your account will be suspended within 24 hours unless you verify your password and billing information using the secure form at this address.",
    "The battery life is disappointing, it barely lasts half a day with normal use, and the charger gets uncomfortably hot after about twenty minutes.",
    "Thanks to everyone who came to the community garden on Saturday, we planted forty trees and the children had a wonderful time helping out.",
    "I have been waiting on hold for over an hour now, this is the third time this month that my internet has stopped working completely.",
    "Limited offer for our loyal readers: buy one pair of sunglasses and get three more for free, only while stocks last, order now before midnight.",
    "The museum's new exhibition about ancient trade routes is well organised, with clear maps and objects that make the long history easy to follow.",
    "My package was left in the rain outside the wrong door, the box was soaked and the book inside is completely ruined, very disappointing service.",
    "What a lovely surprise to find a handwritten thank you note in my order, small things like this make me want to shop here again.",
]
texts = [sentences[i % len(sentences)] + ("" if i < len(sentences) else f" ({i // len(sentences)})") for i in range(n)]
with open(f"{work}/predict.json", "w") as f:
    json.dump({"text": sentences[0]}, f)
with open(f"{work}/batch.json", "w") as f:
    json.dump({"texts": texts}, f)
PY

# One request per endpoint and server first: the answer must have the expected shape.
check() { # NAME URL KIND
  local code
  code=$(curl -s -o "$WORK/check.json" -w '%{http_code}' -X POST -H 'Content-Type: application/json' --data-binary "@$WORK/$3.json" "$2")
  python - "$1" "$2" "$3" "$code" "$WORK/check.json" "$BATCH_SIZE" <<'PY'
import json, sys
name, url, kind, code, path, n = sys.argv[1:7]
body = open(path, encoding="utf-8", errors="replace").read()
try:
    obj = json.loads(body)
    ok = code.startswith("2") and (
        isinstance(obj.get("predictions"), dict) if kind == "predict"
        else len(obj.get("results", [])) == int(n) and all(isinstance(r.get("predictions"), dict) for r in obj["results"]))
except Exception:
    ok = False
if not ok:
    sys.exit(f"{name}: POST {url} answered HTTP {code}, not a {kind} response: {body[:300]}")
PY
}
check trainyard "$TRAINYARD_URL$PREDICT_PATH" predict
check trainyard "$TRAINYARD_URL$BATCH_PATH" batch
check peer "$PEER_URL/predict" predict
check peer "$PEER_URL/batch" batch

load() { # OUTFILE URL BODY CONCURRENCY
  hey -z "${WARMUP_S}s" -c "$4" -m POST -T application/json -D "$WORK/$3.json" "$2" >/dev/null
  hey -z "${DURATION_S}s" -c "$4" -m POST -T application/json -D "$WORK/$3.json" "$2" >"$WORK/$1"
}
echo "inference: ${DURATION_S}s per run after ${WARMUP_S}s warm-up; /predict at c=$PREDICT_CONCURRENCY, /batch ($BATCH_SIZE texts) at c=$BATCH_CONCURRENCY" >&2
load trainyard_predict.txt "$TRAINYARD_URL$PREDICT_PATH" predict "$PREDICT_CONCURRENCY"
load peer_predict.txt "$PEER_URL/predict" predict "$PREDICT_CONCURRENCY"
load trainyard_batch.txt "$TRAINYARD_URL$BATCH_PATH" batch "$BATCH_CONCURRENCY"
load peer_batch.txt "$PEER_URL/batch" batch "$BATCH_CONCURRENCY"

python - "$WORK" "$BATCH_SIZE" "$PREDICT_CONCURRENCY" "$BATCH_CONCURRENCY" "$PEER_THREADS" "$TRAINYARD_URL" <<'PY'
import re, sys
work, batch, cp, cb, threads, url = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]

def parse(path):
    """hey's summary: total seconds, latency percentiles (s), status-code and error counts."""
    text = open(path).read()
    total = float(re.search(r"Total:\s+([\d.]+) secs", text).group(1))
    pct = {int(p): float(s) for p, s in re.findall(r"^\s+(\d+)% in ([\d.]+) secs", text, re.M)}
    status, errors, section = {}, 0, None
    for line in text.splitlines():
        if line.startswith("Status code distribution"):
            section = "status"
        elif line.startswith("Error distribution"):
            section = "errors"
        elif section and (m := re.match(r"\s+\[(\d+)\]\s+(\d+)", line)):
            if section == "status":
                status[int(m.group(1))] = int(m.group(2))
            else:
                errors += int(m.group(1))
    ok = sum(n for code, n in status.items() if 200 <= code < 300)
    # hey leaves out a percentile it has too few answers for: with n < 100 the nearest-rank p99
    # is the slowest answer, which hey prints as "Slowest".
    slowest = re.search(r"Slowest:\s+([\d.]+) secs", text)
    p99 = pct.get(99) or (float(slowest.group(1)) if slowest and sum(status.values()) else None)
    return {"rps": ok / total, "p50": pct.get(50), "p99": p99, "n": sum(status.values()),
            "non2xx": sum(status.values()) - ok, "errors": errors}

ms = lambda s: f"{s * 1000:9.1f}" if s is not None else f"{'n/a':>9}"
rows = {}
print(f"inference over HTTP (trainyard at {url}; peer: aiohttp + transformers, {threads} torch threads)")
print(f"  {'endpoint':<14}{'server':<11}{'conc':>5}{'answers':>8}{'req/s':>9}{'texts/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'errors':>8}")
for ep, conc, per in (("predict", cp, 1), ("batch", cb, batch)):
    for server in ("trainyard", "peer"):
        r = rows[ep, server] = parse(f"{work}/{server}_{ep}.txt")
        r["tps"] = r["rps"] * per
        label = "/predict" if ep == "predict" else f"/batch ({batch})"
        print(f"  {label:<14}{server:<11}{conc:>5}{r['n']:8d}{r['rps']:9.1f}{r['tps']:9.1f}{ms(r['p50'])}{ms(r['p99'])}{r['non2xx']:9d}{r['errors']:8d}")

def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"

for ep, label in (("predict", "/predict"), ("batch", "/batch  ")):
    t, p = rows[ep, "trainyard"], rows[ep, "peer"]
    unit = "req/s" if ep == "predict" else "texts/s"
    print(f"  {label} throughput trainyard/peer: {ratio(t['tps'], p['tps'])} ({unit}, higher is better)"
          f"   p99 trainyard/peer: {ratio(t['p99'], p['p99'])} (lower is better)")
failed = sum(r["non2xx"] + r["errors"] for r in rows.values())
if failed:
    print(f"  WARNING: {failed} requests failed (non-2xx or connection errors); req/s counts 2xx only")
PY
