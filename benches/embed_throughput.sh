#!/usr/bin/env bash
# Benchmark 1: trainyard's tch MiniLM vs sentence-transformers encode() on the same 2,000
# sentences (20-40 words) and thread count, ratio printed. The two sides alternate for ROUNDS
# rounds (default 3), each side keeping its best of 3 passes per round, so that drifting load
# on a shared machine hits both; the headline ratio is best vs best, the per-round ratios are
# printed beside it. THREADS (default 2), N (default 2000), DEVICE for trainyard (cpu|cuda,
# default cpu), PEER_BATCH (default 64; encode()'s own default is 32), REPEATS passes per side
# and round (default 3). The model is $TRAINYARD_LOCAL_MODEL_DIR (MiniLM; any family's folder
# works, see benches/encoder_families.sh). EMBED_BIN: an already built embed_throughput example
# (no cargo build); RESULT_JSON: also write the bests and ratios there as one JSON object.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
THREADS="${THREADS:-2}" N="${N:-2000}" DEVICE="${DEVICE:-cpu}" ROUNDS="${ROUNDS:-3}" PEER_BATCH="${PEER_BATCH:-64}"
REPEATS="${REPEATS:-3}" RESULT_JSON="${RESULT_JSON:-}"
BIN="${EMBED_BIN:-$CARGO_TARGET_DIR/release/examples/embed_throughput}"
[ -n "${EMBED_BIN:-}" ] || cargo build --release --quiet --example embed_throughput
mkdir -p "$TRAINYARD_DATA_DIR"
SENTENCES="$TRAINYARD_DATA_DIR/bench_sentences_$N.txt"
[ -s "$SENTENCES" ] || python benches/make_sentences.py --n "$N" --out "$SENTENCES" >/dev/null
LOG="$(mktemp "${TMPDIR:-/tmp}/trainyard_embed_bench.XXXXXX")"
trap 'rm -f "$LOG"' EXIT
# Runs one side; prints its last stdout line (the JSON result). Its stderr goes to $LOG, shown on failure.
one() { # NAME CMD...
  local name="$1" out
  shift
  : >"$LOG"
  if ! out=$("$@" 2>"$LOG"); then
    echo "$name failed:" >&2
    cat "$LOG" >&2
    exit 1
  fi
  printf '%s\n' "$out" | tail -n1
}
results=()
for round in $(seq "$ROUNDS"); do
  ours=$(one trainyard "$BIN" "$SENTENCES" "$THREADS" "$REPEATS" "$DEVICE")
  peer=$(one "the Python peer" python benches/embed_throughput_peer.py --sentences "$SENTENCES" --threads "$THREADS" \
    --batch-size "$PEER_BATCH" --repeats "$REPEATS")
  results+=("$ours" "$peer")
done
python - "$THREADS" "$PEER_BATCH" "$RESULT_JSON" "${results[@]}" <<'PY'
import json, statistics, sys
threads, peer_batch, result_json, runs = sys.argv[1], sys.argv[2], sys.argv[3], [json.loads(a) for a in sys.argv[4:]]
ours = [r["sentences_per_second"] for r in runs[0::2]]
peer = [r["sentences_per_second"] for r in runs[1::2]]
per_round = [o / p for o, p in zip(ours, peer)]
peer_name = runs[1]["peer"]
print(f"embedding throughput, {runs[0]['sentences']} sentences, {threads} threads, {len(ours)} alternating rounds")
print(f"  trainyard (tch, {runs[0]['device']}, sorted token-budget batches): best {max(ours):7.1f} sentences/s   rounds: " + ", ".join(f"{x:.1f}" for x in ours))
print(f"  {peer_name + ' encode(batch_size=' + peer_batch + ')':<47}: best {max(peer):7.1f} sentences/s   rounds: " + ", ".join(f"{x:.1f}" for x in peer))
print(f"  ratio: {max(ours) / max(peer):.2f}x best vs best (goal >= 1.3x); per round " + ", ".join(f"{x:.2f}" for x in per_round) + f", median {statistics.median(per_round):.2f}x")
if result_json:
    with open(result_json, "w") as f:
        json.dump({"ours": max(ours), "peer": max(peer), "peer_name": peer_name, "ratio": max(ours) / max(peer),
                   "median_ratio": statistics.median(per_round), "ours_rounds": ours, "peer_rounds": peer}, f)
PY
