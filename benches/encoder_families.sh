#!/usr/bin/env bash
# Per encoder family, trainyard vs PyTorch on the same weights, sentences and threads, in one run:
# embedding throughput (benches/embed_throughput.sh: trainyard's TextEncoder vs
# sentence-transformers, or transformers AutoModel + mean pooling where it cannot load the folder)
# and finetune samples/s (benches/finetune_throughput.sh: trainyard's Trainer vs the plain
# PyTorch loop of benches/train_peer.py on AutoModel of the same folder). BERT is the real
# all-MiniLM-L6-v2; RoBERTa, XLM-RoBERTa, DistilBERT, MPNet, ModernBERT and DeBERTa-v3 are random
# models of MiniLM's size (6 x 384, 12 heads, feed-forward 1536 or ModernBERT's GeGLU of the same
# weights, 30,522 embedding rows) written by transformers (tests/python/make_family_model.py
# --bench) with a byte-level BPE of their own that knows the benchmark's words, so that their
# sentences are as many tokens as MiniLM's (~33). Each family's two benchmarks alternate trainyard
# and the peer for ROUNDS rounds; the families run one after another. Prints one markdown table.
#
# Sizes (env): FAMILIES (all: BERT roberta xlm-roberta distilbert mpnet modernbert deberta-v3),
# THREADS (2), ROUNDS (2), N sentences of 20-40 words for embedding (1000), REPEATS timed passes
# over them per side and round (1; each side's best pass is kept), PEER_BATCH (64); finetune:
# STEPS timed steps (10) after WARMUP (3), BATCH_SIZE (16), MAX_TOKENS (128). The whole run takes
# about 10 minutes on an idle 2-core machine, up to ~25 while something else compiles there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
export THREADS="${THREADS:-2}" ROUNDS="${ROUNDS:-2}" N="${N:-1000}" REPEATS="${REPEATS:-1}" PEER_BATCH="${PEER_BATCH:-64}"
export STEPS="${STEPS:-10}" WARMUP="${WARMUP:-3}" BATCH_SIZE="${BATCH_SIZE:-16}" MAX_TOKENS="${MAX_TOKENS:-128}"
FAMILIES="${FAMILIES:-BERT roberta xlm-roberta distilbert mpnet modernbert deberta-v3}"
started="$(date -u '+%Y-%m-%d %H:%M')" t0=$SECONDS
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Build once and keep copies, so that every family runs the same code even if the checkout or
# the target directory changes during the run.
cargo build --release --quiet --example embed_throughput --example finetune_throughput
mkdir -p "$WORK/bin"
cp "$CARGO_TARGET_DIR/release/examples/embed_throughput" "$CARGO_TARGET_DIR/release/examples/finetune_throughput" "$WORK/bin/"
export EMBED_BIN="$WORK/bin/embed_throughput" FINETUNE_BIN="$WORK/bin/finetune_throughput"

declare -A dirs=([BERT]="$TRAINYARD_LOCAL_MODEL_DIR")
for family in $FAMILIES; do
  [ "$family" = BERT ] && continue
  python tests/python/make_family_model.py "$family" "$WORK/$family" --bench >/dev/null 2>"$WORK/make.log" || {
    cat "$WORK/make.log" >&2
    exit 1
  }
  dirs[$family]="$WORK/$family/base"
done

sizes="embedding: $N sentences of 20-40 words, best of $REPEATS passes x $ROUNDS alternating rounds, peer batch $PEER_BATCH; finetune: batch $BATCH_SIZE, <= $MAX_TOKENS tokens, $STEPS timed steps after $WARMUP warm-up, best of $ROUNDS alternating rounds"
echo "encoder families, trainyard vs PyTorch ($started UTC, $(nproc) cores, $THREADS threads; $sizes)"

# Cells of one benchmark: "ours | peer | ratio" from its RESULT_JSON (or failed).
cells() { # JSON_FILE KEY_FORMAT
  python - "$1" "$2" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print("failed | failed | -")
    sys.exit(0)
f = sys.argv[2]
print(f"{r['ours']:{f}} | {r['peer']:{f}} | {r['ratio']:.2f}x (median {r['median_ratio']:.2f}x)")
PY
}

rows=()
peers=()
for family in $FAMILIES; do
  dir="${dirs[$family]}"
  embed_json="$WORK/$family.embed.json" finetune_json="$WORK/$family.finetune.json"
  if ! TRAINYARD_LOCAL_MODEL_DIR="$dir" RESULT_JSON="$embed_json" bash benches/embed_throughput.sh 2>&1 |
    sed "s/^/  [$family embed] /"; then
    echo "  [$family embed] FAILED" >&2
  fi
  if ! TRAINYARD_LOCAL_MODEL_DIR="$dir" RESULT_JSON="$finetune_json" bash benches/finetune_throughput.sh 2>&1 |
    sed "s/^/  [$family finetune] /"; then
    echo "  [$family finetune] FAILED" >&2
  fi
  label="$family"
  [ "$family" = BERT ] && label="BERT (all-MiniLM-L6-v2)"
  rows+=("| $label | $(cells "$embed_json" .1f) | $(cells "$finetune_json" .2f) |")
  peers+=("$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["peer_name"])' "$embed_json" 2>/dev/null || echo '?')")
done

echo
echo "### Encoder families: trainyard vs PyTorch ($started UTC, $(nproc) cores, $THREADS threads)"
echo
echo "Sizes: $sizes. Ratios are best vs best (median of the per-round ratios in brackets); goal >= 1.0x each."
echo "Embedding peer per family: $(paste -d= <(tr ' ' '\n' <<<"$FAMILIES") <(printf '%s\n' "${peers[@]}") | paste -sd' ')."
echo "Finetune peer: transformers AutoModel of the same folder + the same head, loss, AdamW and clipping (benches/train_peer.py)."
echo
echo "| family | embed trainyard/s | embed peer/s | ratio | finetune trainyard samples/s | finetune peer samples/s | ratio |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "(whole run: $(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s)"
