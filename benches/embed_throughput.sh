#!/usr/bin/env bash
# Benchmark 1: trainyard's tch MiniLM vs sentence-transformers encode() on the same 2,000
# sentences (20-40 words) and thread count, one run, ratio printed. THREADS (default 2),
# N (default 2000), DEVICE for trainyard (cpu|cuda, default cpu).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
THREADS="${THREADS:-2}" N="${N:-2000}" DEVICE="${DEVICE:-cpu}"
cargo build --release --quiet --example embed_throughput
mkdir -p "$TRAINYARD_DATA_DIR"
SENTENCES="$TRAINYARD_DATA_DIR/bench_sentences_$N.txt"
[ -s "$SENTENCES" ] || python benches/make_sentences.py --n "$N" --out "$SENTENCES" >/dev/null
ours=$("$CARGO_TARGET_DIR/release/examples/embed_throughput" "$SENTENCES" "$THREADS" 3 "$DEVICE")
peer=$(python benches/embed_throughput_peer.py --sentences "$SENTENCES" --threads "$THREADS" --batch-size 64 --repeats 3 2>/dev/null)
python - "$ours" "$peer" "$THREADS" <<'PY'
import json, sys
ours, peer, threads = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
print(f"embedding throughput, {ours['sentences']} sentences, {threads} threads")
print(f"  trainyard (tch, {ours['device']}, sorted token-budget batches): {ours['sentences_per_second']:8.1f} sentences/s")
print(f"  sentence-transformers encode(batch_size=64)          : {peer['sentences_per_second']:8.1f} sentences/s")
print(f"  ratio: {ours['sentences_per_second'] / peer['sentences_per_second']:.2f}x (goal >= 1.3x)")
PY
