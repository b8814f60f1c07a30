#!/usr/bin/env bash
# Benchmark 1: trainyard's tch MiniLM vs sentence-transformers encode() on the same 2,000
# sentences (20-40 words) and thread count, ratio printed. The two sides alternate for ROUNDS
# rounds (default 3), each side keeping its best of 3 passes per round, so that drifting load
# on a shared machine hits both; the headline ratio is best vs best, the per-round ratios are
# printed beside it. THREADS (default 2), N (default 2000), DEVICE for trainyard (cpu|cuda,
# default cpu), PEER_BATCH (default 64; encode()'s own default is 32).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
THREADS="${THREADS:-2}" N="${N:-2000}" DEVICE="${DEVICE:-cpu}" ROUNDS="${ROUNDS:-3}" PEER_BATCH="${PEER_BATCH:-64}"
cargo build --release --quiet --example embed_throughput
mkdir -p "$TRAINYARD_DATA_DIR"
SENTENCES="$TRAINYARD_DATA_DIR/bench_sentences_$N.txt"
[ -s "$SENTENCES" ] || python benches/make_sentences.py --n "$N" --out "$SENTENCES" >/dev/null
results=()
for round in $(seq "$ROUNDS"); do
  ours=$("$CARGO_TARGET_DIR/release/examples/embed_throughput" "$SENTENCES" "$THREADS" 3 "$DEVICE")
  peer=$(python benches/embed_throughput_peer.py --sentences "$SENTENCES" --threads "$THREADS" \
    --batch-size "$PEER_BATCH" --repeats 3 2>/dev/null)
  results+=("$ours" "$peer")
done
python - "$THREADS" "$PEER_BATCH" "${results[@]}" <<'PY'
import json, statistics, sys
threads, peer_batch, runs = sys.argv[1], sys.argv[2], [json.loads(a) for a in sys.argv[3:]]
ours = [r["sentences_per_second"] for r in runs[0::2]]
peer = [r["sentences_per_second"] for r in runs[1::2]]
per_round = [o / p for o, p in zip(ours, peer)]
print(f"embedding throughput, {runs[0]['sentences']} sentences, {threads} threads, {len(ours)} alternating rounds")
print(f"  trainyard (tch, {runs[0]['device']}, sorted token-budget batches): best {max(ours):7.1f} sentences/s   rounds: " + ", ".join(f"{x:.1f}" for x in ours))
print(f"  sentence-transformers encode(batch_size={peer_batch})          : best {max(peer):7.1f} sentences/s   rounds: " + ", ".join(f"{x:.1f}" for x in peer))
print(f"  ratio: {max(ours) / max(peer):.2f}x best vs best (goal >= 1.3x); per round " + ", ".join(f"{x:.2f}" for x in per_round) + f", median {statistics.median(per_round):.2f}x")
PY
