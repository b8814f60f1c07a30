#!/usr/bin/env bash
# Embedding throughput per encoder family: trainyard (tch) vs sentence-transformers on the same
# weights, sentences and threads, in one run (benches/embed_throughput.sh on each folder). BERT is
# the real all-MiniLM-L6-v2; RoBERTa and XLM-RoBERTa are random models of MiniLM's size (6 x 384,
# 12 heads) written by transformers (tests/python/make_family_model.py --bench) with a small BPE
# vocabulary of their own, so their sentences are longer in tokens than MiniLM's. ROUNDS (2),
# THREADS (2), N (2000) as in embed_throughput.sh. Prints one table of ratios.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$TRAINYARD_ROOT"
export ROUNDS="${ROUNDS:-2}" THREADS="${THREADS:-2}" N="${N:-2000}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
declare -A dirs=([BERT]="$TRAINYARD_LOCAL_MODEL_DIR")
for family in roberta xlm-roberta; do
  python tests/python/make_family_model.py "$family" "$WORK/$family" --bench 2>/dev/null
  dirs[$family]="$WORK/$family/base"
done
echo "encoder families, embedding throughput ($(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores, $THREADS threads, $N sentences, best of $ROUNDS alternating rounds)"
table="| family | trainyard sentences/s | sentence-transformers sentences/s | ratio |\n|---|---|---|---|"
for family in BERT roberta xlm-roberta; do
  out=$(TRAINYARD_LOCAL_MODEL_DIR="${dirs[$family]}" bash benches/embed_throughput.sh)
  echo "$out" | sed "s/^/  [$family] /"
  ours=$(echo "$out" | sed -n 's/.*trainyard.*best *\([0-9.]*\) sentences.*/\1/p')
  peer=$(echo "$out" | sed -n 's/.*sentence-transformers.*best *\([0-9.]*\) sentences.*/\1/p')
  ratio=$(echo "$out" | sed -n 's/.*ratio: \([0-9.]*x\) best vs best.*/\1/p')
  table="$table\n| $family | $ours | $peer | $ratio |"
done
echo -e "$table"
