#!/usr/bin/env bash
# Benchmark 5: fine-tuning MiniLM + MLP head on CPU, trainyard's training step (tch) vs a plain
# PyTorch loop (benches/train_peer.py) with the same texts, batch size, token limit and threads.
# Runs alternate trainyard, peer, trainyard, peer (ROUNDS rounds, default 2); best of each kept,
# ratio printed. STEPS timed steps (default 20) after WARMUP (3), BATCH_SIZE (16), MAX_TOKENS
# (128), THREADS (2), N sentences of 20-40 words (2000). PEER_ONLY=1 runs the peer alone.
# The encoder is $TRAINYARD_LOCAL_MODEL_DIR (MiniLM; any family's folder works, see
# benches/encoder_families.sh). FINETUNE_BIN: an already built finetune_throughput example (no
# cargo build); RESULT_JSON: also write the bests and ratio there as one JSON object.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
STEPS="${STEPS:-20}" WARMUP="${WARMUP:-3}" BATCH_SIZE="${BATCH_SIZE:-16}" MAX_TOKENS="${MAX_TOKENS:-128}"
THREADS="${THREADS:-2}" N="${N:-2000}" ROUNDS="${ROUNDS:-2}" PEER_ONLY="${PEER_ONLY:-0}" RESULT_JSON="${RESULT_JSON:-}"
BIN="${FINETUNE_BIN:-$CARGO_TARGET_DIR/release/examples/finetune_throughput}"
[ "$PEER_ONLY" = 1 ] || [ -n "${FINETUNE_BIN:-}" ] || cargo build --release --quiet --example finetune_throughput
mkdir -p "$TRAINYARD_DATA_DIR"
SENTENCES="$TRAINYARD_DATA_DIR/bench_sentences_$N.txt"
[ -s "$SENTENCES" ] || python benches/make_sentences.py --n "$N" --out "$SENTENCES" >/dev/null
ARGS=(--texts "$SENTENCES" --steps "$STEPS" --batch-size "$BATCH_SIZE" --max-tokens "$MAX_TOKENS" --threads "$THREADS" --warmup "$WARMUP")
LOG="$(mktemp "${TMPDIR:-/tmp}/trainyard_finetune_bench.XXXXXX")"
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

ours=() peer=()
for round in $(seq 1 "$ROUNDS"); do
  if [ "$PEER_ONLY" != 1 ]; then
    ours+=("$(one trainyard "$BIN" "${ARGS[@]}")")
    echo "round $round trainyard: ${ours[-1]}" >&2
  fi
  peer+=("$(one "the PyTorch peer" python benches/train_peer.py "${ARGS[@]}")")
  echo "round $round peer     : ${peer[-1]}" >&2
done

python - "$STEPS" "$BATCH_SIZE" "$MAX_TOKENS" "$THREADS" "$WARMUP" "$RESULT_JSON" "${#ours[@]}" "${ours[@]}" "${peer[@]}" <<'PY'
import json, statistics, sys
steps, batch, max_tokens, threads, warmup, result_json, n_ours = sys.argv[1:8]
rest = sys.argv[8:]
ours = [json.loads(x) for x in rest[: int(n_ours)]]
peer = [json.loads(x) for x in rest[int(n_ours):]]
best = lambda runs: max(r["samples_per_sec"] for r in runs) if runs else None
o, p = best(ours), best(peer)
model = peer[0].get("model_type", "bert")
model = "MiniLM" if model == "bert" else model
print(f"fine-tuning throughput, {model} + MLP head, batch {batch}, <= {max_tokens} tokens, {threads} threads, "
      f"{steps} timed steps after {warmup} warm-up (best of {len(peer)})")
print(f"  trainyard (tch)        : " + (f"{o:8.2f} samples/s" if o else "     n/a (PEER_ONLY=1)") +
      ("   rounds: " + ", ".join(f"{r['samples_per_sec']:.2f}" for r in ours) if o else ""))
print(f"  PyTorch loop (AdamW)   : {p:8.2f} samples/s   rounds: " + ", ".join(f"{r['samples_per_sec']:.2f}" for r in peer))
per_round = [a["samples_per_sec"] / b["samples_per_sec"] for a, b in zip(ours, peer)]
if o:
    print(f"  ratio trainyard/peer: {o / p:.2f}x (goal >= 1.0x); per round " + ", ".join(f"{x:.2f}" for x in per_round)
          + f", median {statistics.median(per_round):.2f}x")
if result_json:
    with open(result_json, "w") as f:
        json.dump({"ours": o, "peer": p, "ratio": o / p if o else None,
                   "median_ratio": statistics.median(per_round) if per_round else None,
                   "family": ours[0].get("family") if ours else None, "model_type": peer[0].get("model_type")}, f)
PY
