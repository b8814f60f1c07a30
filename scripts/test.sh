#!/usr/bin/env bash
# README command 2: set everything up on a fresh machine and run the whole test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TRAINYARD_ROOT"
bash scripts/setup.sh
# Headless Chromium for the Swagger UI check, the official OpenAI client for /v1/embeddings.
if ! command -v chromium >/dev/null; then
  echo "[test] installing chromium (Debian package)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[test] chromium could not be installed; the Swagger UI browser test will fail"
fi
"$TRAINYARD_VENV/bin/python" -c "import openai" 2>/dev/null \
  || "$TRAINYARD_VENV/bin/pip" install -q --disable-pip-version-check openai
# Tests share one machine of 2 cores: run test binaries one at a time, tests 2 at a time.
cargo test --release --workspace -- --test-threads 2
