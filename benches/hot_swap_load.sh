#!/usr/bin/env bash
# Benchmark 6: model hot swap under load. While hey sends POST /predict for DURATION_S (30) at
# CONCURRENCY (8) to a running trainyard, versions V1 and V2 of model NAME are promoted in turn
# every SWAP_EVERY_S (5) seconds; each promotion's HTTP status and time are printed, then the
# status-code distribution and "failed requests: N" (non-2xx answers + connection errors).
#
#   bash benches/hot_swap_load.sh NAME V1 V2
#
# trainyard must already serve at TRAINYARD_URL (default http://127.0.0.1:8322); PREDICT_PATH
# (default /predict) is the route under load. V1 is promoted once before the load starts.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
if [ $# -ne 3 ]; then
  echo "usage: $0 NAME V1 V2" >&2
  exit 2
fi
NAME="$1" V1="$2" V2="$3"
TRAINYARD_URL="${TRAINYARD_URL:-http://127.0.0.1:8322}"
TRAINYARD_URL="${TRAINYARD_URL%/}"
PREDICT_PATH="${PREDICT_PATH:-/predict}"
DURATION_S="${DURATION_S:-30}" CONCURRENCY="${CONCURRENCY:-8}" SWAP_EVERY_S="${SWAP_EVERY_S:-5}"

if ! command -v hey >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q hey >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q hey >/dev/null; }
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/trainyard_hot_swap.XXXXXX")"
HEY_PID=""
cleanup() {
  [ -n "$HEY_PID" ] && kill "$HEY_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
printf '%s' '{"text": "I ordered the blue jacket two weeks ago and it still has not arrived, and nobody from customer support has answered any of my three emails so far."}' >"$WORK/predict.json"

promote() { # VERSION LABEL
  local out code secs
  rm -f "$WORK/promote.json"
  out=$(curl -s -m 30 -o "$WORK/promote.json" -w '%{http_code} %{time_total}' -X POST \
    "$TRAINYARD_URL/api/v1/models/$NAME/versions/$1/promote") || true
  read -r code secs <<<"${out:-000 0}"
  printf '  %-8s promote %s v%s: HTTP %s in %.3f s' "$2" "$NAME" "$1" "$code" "$secs"
  if [ "$code" = 000 ]; then
    printf '  (no answer)'
  elif [[ "$code" != 2* ]]; then
    printf '  %s' "$(head -c 200 "$WORK/promote.json" 2>/dev/null | tr '\n' ' ')"
  fi
  printf '\n'
}

echo "hot swap under load: POST $TRAINYARD_URL$PREDICT_PATH for ${DURATION_S}s at c=$CONCURRENCY, promoting $NAME v$V1/v$V2 every ${SWAP_EVERY_S}s"
promote "$V1" "before"
hey -z "${DURATION_S}s" -c "$CONCURRENCY" -m POST -T application/json -D "$WORK/predict.json" \
  "$TRAINYARD_URL$PREDICT_PATH" >"$WORK/hey.txt" 2>&1 &
HEY_PID=$!
t0="$EPOCHREALTIME"
k=1
while awk -v k="$k" -v e="$SWAP_EVERY_S" -v d="$DURATION_S" 'BEGIN { exit !(k * e < d) }'; do
  # Sleep until t0 + k * SWAP_EVERY_S (no drift from the time the promotions take).
  sleep "$(awk -v t0="$t0" -v now="$EPOCHREALTIME" -v k="$k" -v e="$SWAP_EVERY_S" \
    'BEGIN { s = t0 + k * e - now; printf "%.3f", (s > 0 ? s : 0) }')"
  if [ $((k % 2)) -eq 1 ]; then v="$V2"; else v="$V1"; fi
  promote "$v" "$(awk -v t0="$t0" -v now="$EPOCHREALTIME" 'BEGIN { printf "t+%.1fs", now - t0 }')"
  k=$((k + 1))
done
wait "$HEY_PID" || true
HEY_PID=""

python - "$WORK/hey.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"Total:\s+([\d.]+) secs", text)
if not m:
    sys.exit("hey printed no summary:\n" + text[-2000:])
total = float(m.group(1))
pct = {int(p): float(s) for p, s in re.findall(r"^\s+(\d+)% in ([\d.]+) secs", text, re.M)}
slowest = re.search(r"Slowest:\s+([\d.]+) secs", text)
status, errors, section = {}, [], None
for line in text.splitlines():
    if line.startswith("Status code distribution"):
        section = "status"
    elif line.startswith("Error distribution"):
        section = "errors"
    elif section and (m := re.match(r"\s+\[(\d+)\]\s+(.*)", line)):
        if section == "status":
            status[int(m.group(1))] = int(m.group(2).split()[0])
        else:
            errors.append((int(m.group(1)), m.group(2)))
answers = sum(status.values())
ok = sum(n for code, n in status.items() if 200 <= code < 300)
n_errors = sum(n for n, _ in errors)
ms = lambda s: f"{s * 1000:.1f} ms" if s is not None else "n/a"
p99 = pct.get(99) or (float(slowest.group(1)) if slowest and answers else None)
print(f"  {answers + n_errors} requests in {total:.1f} s: {ok / total:.1f} 2xx/s, p50 {ms(pct.get(50))}, "
      f"p99 {ms(p99)}, slowest {ms(float(slowest.group(1)) if slowest and answers else None)}")
print("  status codes: " + (", ".join(f"[{c}] {n}" for c, n in sorted(status.items())) or "none"))
for n, message in errors:
    print(f"  error x{n}: {message[:160]}")
print(f"failed requests: {answers - ok + n_errors}")
PY
