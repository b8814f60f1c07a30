#!/usr/bin/env bash
# GPU readiness check (issue 8 §7): trainyard's ML code on a GPU machine, beside PyTorch.
#
#   bash scripts/gpu_check.sh --prepare   # dev machine: build + strip the gpu_check example and
#                                         # stage it with config.json/tokenizer.json (no weights),
#                                         # the Python peer and the sentence generator in .gpu_check/
#   bash scripts/gpu_check.sh             # GPU machine (no Rust, no internet): from the repo root,
#                                         # with .gpu_check/ carried; --device cuda
#   bash scripts/gpu_check.sh --cpu       # dev machine / CI: prepare, then the same flow on CPU
#                                         # with the venv's torch and small sizes (~1-2 minutes)
#
# The run: finds python3's own torch `lib` folder for LD_LIBRARY_PATH, writes a seeded random
# BERT of MiniLM's shape (scripts/gpu_check_peer.py write-weights) beside the staged tokenizer,
# runs gpu_check (CUDA visible? head and finetune training, CPU/GPU agreement, the serve path,
# throughput fp32/fp16/bf16, then every encoder family in fp32, bf16 and fp16 on small random
# models staged by --prepare), runs the peer (sentence-transformers, else transformers) on the same
# weights and sentences, and prints both side by side with trainyard/peer ratios.
# From the device tool: run(command="bash scripts/gpu_check.sh", carry=[".gpu_check"], timeout_s=540).
# Results (trainyard.json, peer.json, summary.txt) are copied to $GPU_CHECK_OUT, or $OUT if set.
# Sizes can be overridden: N, BATCH, BUDGET, THREADS, REPEATS, HEAD_STEPS, FINETUNE_STEPS; the
# time limits of each side: OURS_LIMIT, PEER_LIMIT (240/180 s on CUDA, 1200/600 s on CPU).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGE="$ROOT/.gpu_check"
mode=device build=1
for arg in "$@"; do
  case "$arg" in
    --prepare) mode=prepare ;;
    --cpu) mode=cpu ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (see --help)" >&2; exit 64 ;;
  esac
done

prepare() {
  # shellcheck source=scripts/env.sh
  source "$ROOT/scripts/env.sh"
  cd "$ROOT"
  if [ "$build" = 1 ]; then
    echo "[gpu_check] cargo build --release --example gpu_check"
    cargo build --release --quiet --example gpu_check
  fi
  local built="$CARGO_TARGET_DIR/release/examples/gpu_check"
  [ -x "$built" ] || { echo "[gpu_check] $built is missing: build it first" >&2; exit 1; }
  rm -rf "$STAGE"
  mkdir -p "$STAGE/bin" "$STAGE/model/1_Pooling"
  strip -o "$STAGE/bin/gpu_check" "$built"
  local m="$TRAINYARD_LOCAL_MODEL_DIR"
  cp "$m/config.json" "$m/tokenizer.json" "$STAGE/model/"
  # sentence-transformers' own folder files (a few KB) so that the peer loads MiniLM's exact
  # pipeline; the 91 MB weights stay behind (random ones are written on the machine).
  for f in tokenizer_config.json special_tokens_map.json vocab.txt modules.json \
           sentence_bert_config.json config_sentence_transformers.json 1_Pooling/config.json; do
    [ -f "$m/$f" ] && cp "$m/$f" "$STAGE/model/$f"
  done
  cp "$ROOT/scripts/gpu_check_peer.py" "$ROOT/benches/make_sentences.py" "$STAGE/"
  # Section (g): a small random model of every other family, written here by transformers
  # (the GPU machine may have no transformers); only base/ and reference.json travel.
  local family
  for family in roberta xlm-roberta distilbert mpnet modernbert deberta-v3 deberta-v2; do
    python "$ROOT/tests/python/make_family_model.py" "$family" "$STAGE/tmp/$family" >/dev/null
    mkdir -p "$STAGE/families/$family"
    cp -r "$STAGE/tmp/$family/base" "$STAGE/tmp/$family/reference.json" "$STAGE/families/$family/"
  done
  rm -rf "$STAGE/tmp"
  # Per-family throughput on the GPU machine: the model writer and its sentence source, in the
  # layout the writer expects (its --bench models are written there, ~90 MB each).
  mkdir -p "$STAGE/tests/python" "$STAGE/benches"
  cp "$ROOT/tests/python/make_family_model.py" "$STAGE/tests/python/"
  cp "$ROOT/benches/make_sentences.py" "$STAGE/benches/"
  local bytes total
  bytes=$(stat -c %s "$STAGE/bin/gpu_check")
  total=$(du -sb "$STAGE" | cut -f1)
  echo "[gpu_check] staged $STAGE: stripped binary $((bytes / 1024 / 1024)) MiB ($bytes bytes, unstripped $(($(stat -c %s "$built") / 1024 / 1024)) MiB), folder $((total / 1024)) KiB"
  echo "[gpu_check] binary needs: $(readelf -d "$STAGE/bin/gpu_check" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
  if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
    echo "[gpu_check] $STAGE is over 60 MiB: it will not fit in one device call" >&2
    exit 1
  fi
}

run_check() {
  local device="$1" py="${PYTHON:-python3}"
  local bin="$STAGE/bin/gpu_check"
  [ -x "$bin" ] || { echo "[gpu_check] $bin is missing: run 'bash scripts/gpu_check.sh --prepare' on the dev machine and carry .gpu_check" >&2; exit 1; }
  local n batch budget threads repeats head_steps ft_steps dtypes ours_limit peer_limit
  # Sizes, and time limits per side: on a GPU machine they keep the whole check inside one
  # device call (540 s); on CPU the check shares two cores with whatever else runs (CI runs it
  # beside the other integration tests), so the limits only catch a hang.
  if [ "$device" = cuda ]; then
    ours_limit=${OURS_LIMIT:-240} peer_limit=${PEER_LIMIT:-180}
    n=${N:-2000} batch=${BATCH:-128} budget=${BUDGET:-16384} threads=${THREADS:-4} repeats=${REPEATS:-5}
    head_steps=${HEAD_STEPS:-100} ft_steps=${FINETUNE_STEPS:-20} dtypes=fp32,fp16,bf16
  else
    ours_limit=${OURS_LIMIT:-1200} peer_limit=${PEER_LIMIT:-600}
    n=${N:-200} batch=${BATCH:-32} budget=${BUDGET:-2048} threads=${THREADS:-2} repeats=${REPEATS:-2}
    head_steps=${HEAD_STEPS:-40} ft_steps=${FINETUNE_STEPS:-6} dtypes=fp32
  fi
  # This machine's own libtorch: the `lib` folder beside torch/__init__.py of its python.
  local torch_lib versions
  { read -r torch_lib; read -r versions; } < <("$py" -c 'import os, sys, torch
print(os.path.join(os.path.dirname(torch.__file__), "lib"))
print("python", sys.version.split()[0], "torch", torch.__version__)')
  [ -f "$torch_lib/libtorch_cpu.so" ] || { echo "[gpu_check] no libtorch_cpu.so in $torch_lib" >&2; exit 1; }
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  WORK="$(mktemp -d /tmp/gpu_check.XXXXXX)"
  trap 'rm -rf "$WORK"' EXIT
  local work="$WORK"
  echo "[gpu_check] host $(uname -m), $versions, torch lib $torch_lib"
  if command -v nvidia-smi >/dev/null; then
    echo "[gpu_check] $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n1)"
  fi
  if ldd "$bin" | grep -q "not found"; then
    echo "[gpu_check] the binary's libraries are not all found:" >&2
    ldd "$bin" | grep "not found" >&2
  fi
  echo "[gpu_check] binary $(($(stat -c %s "$bin") / 1024 / 1024)) MiB; libtorch_cuda.so -> $(ldd "$bin" | sed -n 's/.*libtorch_cuda.so => \([^ ]*\).*/\1/p')"
  cp -r "$STAGE/model" "$work/model"
  "$py" "$STAGE/gpu_check_peer.py" write-weights --model-dir "$work/model" --seed 0
  "$py" "$STAGE/make_sentences.py" --n "$n" --seed 42 --out "$work/sentences.txt"
  local started=$SECONDS rc_ours=0 rc_peer=0 all_started=$SECONDS
  echo "[gpu_check] trainyard gpu_check --device $device (report follows)"
  timeout "$ours_limit" "$bin" --device "$device" --model-dir "$work/model" --sentences "$work/sentences.txt" \
    --n "$n" --batch-size "$batch" --token-budget "$budget" --threads "$threads" --repeats "$repeats" \
    --head-steps "$head_steps" --finetune-steps "$ft_steps" \
    --dump-embeddings "$work/trainyard_embeddings.json" --families-dir "$STAGE/families" --json >"$work/trainyard.json" || rc_ours=$?
  echo "[gpu_check] trainyard side: exit $rc_ours after $((SECONDS - started))s"
  [ "$rc_ours" = 124 ] && echo "[gpu_check] trainyard side: stopped at its limit of ${ours_limit}s (OURS_LIMIT)"
  started=$SECONDS
  timeout "$peer_limit" "$py" "$STAGE/gpu_check_peer.py" bench --model-dir "$work/model" --sentences "$work/sentences.txt" \
    --device "$device" --batch-size "$batch" --repeats "$repeats" --dtypes "$dtypes" \
    $([ "$device" = cpu ] && echo "--threads $threads") \
    --compare "$work/trainyard_embeddings.json" >"$work/peer.json" || rc_peer=$?
  echo "[gpu_check] peer side: exit $rc_peer after $((SECONDS - started))s"
  [ "$rc_peer" = 124 ] && echo "[gpu_check] peer side: stopped at its limit of ${peer_limit}s (PEER_LIMIT)"
  RC_OURS=$rc_ours RC_PEER=$rc_peer OURS_LIMIT=$ours_limit PEER_LIMIT=$peer_limit \
    "$py" - "$work/trainyard.json" "$work/peer.json" <<'PY' | tee "$work/summary.txt"
import json, os, sys

def load(path, rc, limit):
    if rc == "124":
        return {"error": f"stopped at its time limit of {limit} s before it wrote a report"}
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001 - report whatever came back
        return {"error": f"no JSON from {path} (exit {rc}): {e}"}

ours = load(sys.argv[1], os.environ["RC_OURS"], os.environ["OURS_LIMIT"])
peer = load(sys.argv[2], os.environ["RC_PEER"], os.environ["PEER_LIMIT"])
print("\n==== gpu_check summary ====")
cuda = ours.get("cuda", {})
print(f"device {ours.get('device')}: tch CUDA available {cuda.get('available')}, devices {cuda.get('device_count')}, "
      f"cudnn {cuda.get('cudnn')}, libtorch_cuda.so {cuda.get('libtorch_cuda')}")
if peer.get("gpu"):
    print(f"GPU {peer['gpu']}, torch {peer.get('torch')} (CUDA {peer.get('cuda')}, TF32 matmul {peer.get('tf32_matmul')})")
h, f = ours.get("head", {}), ours.get("finetune", {})
if "loss_start" in h:
    print(f"head: loss {h['loss_start']:.4f} -> {h['loss_end']:.4f} over {h['steps']} steps")
if "loss_start" in f:
    print(f"finetune: loss {f['loss_start']:.4f} -> {f['loss_end']:.4f} over {f['steps']} steps, encoder moved {f.get('encoder_max_abs_delta', 0):.2e}")
a = ours.get("agreement", {})
if "mode" in a:
    print(f"agreement ({a['mode']}, tolerance {a['tolerance']:g}): embeddings {a.get('embeddings_max_abs_diff', float('nan')):.2e}, "
          f"finetune logits {a.get('finetune_logits_max_abs_diff', float('nan')):.2e}, head logits {a.get('head_logits_max_abs_diff', float('nan')):.2e}")
inf = ours.get("inference", {}).get("finetune", {})
if inf:
    print(f"serve path: {inf.get('returned')} of {inf.get('requested')} results, vs trainer {inf.get('max_abs_diff_vs_trainer', float('nan')):.2e}")
if peer.get("compare"):
    c = peer["compare"]
    print(f"trainyard vs {peer.get('peer')} fp32 embeddings ({c['sentences']} sentences, same weights): max abs diff {c['max_abs_diff_trainyard_vs_peer']:.2e} (tolerance {c['tolerance']:g})")
peer_sps = {r["dtype"]: r["sentences_per_second"] for r in peer.get("results", [])}
rows = ours.get("throughput", {}).get("results", [])
if rows:
    print(f"\nthroughput, {rows[0]['sentences']} sentences of 20-40 words, peer: {peer.get('peer', '?')} batch {peer.get('batch_size')}")
    print(f"  {'dtype':5} {'trainyard path':44} {'trainyard':>10} {'peer':>10} {'ratio':>7}")
    for r in rows:
        what = (f"serve: TextEncoder, token budget {r['token_budget']}" if r["path"] == "serve"
                else f"fixed: encoder, batch {r['batch_size']}, sorted")
        p = peer_sps.get(r["dtype"]) if not r.get("smoke") else None
        ratio = f"{r['sentences_per_second'] / p:6.2f}x" if p else "    -"
        tag = "  (CPU smoke test)" if r.get("smoke") else ""
        print(f"  {r['dtype']:5} {what:44} {r['sentences_per_second']:10.1f} {p if p else '-':>10} {ratio:>7}{tag}")
if ours.get("device") == "cpu":
    print("  (CPU run: small sizes on a shared machine, so these ratios check the flow, not speed;"
          " benches/embed_throughput.sh is the CPU benchmark)")
for hp in ours.get("throughput", {}).get("half_precision", []):
    print(f"  {hp['dtype']} vs fp32: min cosine {hp['min_cosine_vs_fp32']:.5f}, max abs diff {hp['max_abs_diff_vs_fp32']:.2e}" + ("  (CPU smoke test)" if hp.get("smoke") else ""))
fam = ours.get("families", {})
if isinstance(fam, dict) and "error" not in fam:
    print("\nfamilies (small random models): fp32 device vs CPU | bf16 vs fp32 | fp16 vs fp32 (max abs, min cosine) | bf16 / fp16 finetune loss")
    for name, f in fam.items():
        if not isinstance(f, dict) or "bf16_vs_fp32" not in f:
            continue
        b, h = f["bf16_vs_fp32"], f["fp16_vs_fp32"]
        bt, ht = f.get("bf16_finetune", {}), f.get("fp16_finetune", {})
        print(f"  {name:12} {f['fp32_device_vs_cpu_max_abs']:.1e} | {b['max_abs']:.1e} {b['min_cosine']:.4f} | {h['max_abs']:.1e} {h['min_cosine']:.4f}"
              f" | {bt.get('first_loss', float('nan')):.3f}->{bt.get('last_loss', float('nan')):.3f} / {ht.get('first_loss', float('nan')):.3f}->{ht.get('last_loss', float('nan')):.3f}")
for s in ours.get("skipped", []):
    print(f"skipped: {s}")
for s in ours.get("failures", []):
    print(f"FAILED: {s}")
if "error" in ours:
    print(f"FAILED: trainyard: {ours['error']}")
if "error" in peer:
    print(f"FAILED: peer: {peer['error']}")
peer_ok = "error" not in peer and (peer.get("compare") or {}).get("ok", False)
print(f"\nresult: trainyard checks {'PASS' if ours.get('ok') else 'FAIL'}, peer {'ok' if peer_ok else 'FAIL'}")
PY
  family_throughput "$device" "$py" "$bin" "$work" "$dtypes" "$threads"
  local out="${GPU_CHECK_OUT:-${OUT:-}}"
  if [ -n "$out" ]; then
    mkdir -p "$out"
    cp "$work/trainyard.json" "$work/peer.json" "$work/summary.txt" "$out/"
    cp "$work"/families_*.json "$work/families.txt" "$out/" 2>/dev/null || true
    echo "[gpu_check] results copied to $out"
  fi
  echo "[gpu_check] total $((SECONDS - all_started))s for both sides"
  [ "$rc_ours" = 0 ] && [ "$rc_peer" = 0 ] && grep -q "trainyard checks PASS, peer ok" "$work/summary.txt"
}

# Embedding throughput per encoder family beside PyTorch on the same device: a MiniLM-sized random
# model of each family (written here by transformers, when this machine has it), trainyard's
# serve and fixed-batch paths against the peer, fp32 and (on CUDA) fp16/bf16. On CPU it runs only
# with FAMILY_THROUGHPUT=1 (slow); FAMILY_BUDGET (300 s) stops before a family that would start
# past it; FAMILY_N (1000) sentences.
family_throughput() { # DEVICE PY BIN WORK DTYPES THREADS
  local device="$1" py="$2" bin="$3" work="$4" dtypes="$5" threads="$6"
  if [ "$device" != cuda ] && [ "${FAMILY_THROUGHPUT:-0}" != 1 ]; then
    echo "[gpu_check] per-family throughput: skipped on CPU (FAMILY_THROUGHPUT=1 runs it)"
    return 0
  fi
  if ! "$py" -c "import transformers, tokenizers" 2>/dev/null; then
    echo "[gpu_check] per-family throughput: skipped: this python has no transformers/tokenizers" | tee "$work/families.txt"
    return 0
  fi
  local started=$SECONDS family n="${FAMILY_N:-1000}"
  : >"$work/families.txt"
  for family in roberta xlm-roberta distilbert mpnet modernbert deberta-v3; do
    if [ $((SECONDS - started)) -gt "${FAMILY_BUDGET:-300}" ]; then
      echo "[gpu_check] $family: skipped (FAMILY_BUDGET ${FAMILY_BUDGET:-300}s spent)" | tee -a "$work/families.txt"
      continue
    fi
    local dir="$work/bench_$family"
    if ! "$py" "$STAGE/tests/python/make_family_model.py" "$family" "$dir" --bench >/dev/null 2>"$work/family.err"; then
      echo "[gpu_check] $family: the model could not be written: $(tail -n1 "$work/family.err")" | tee -a "$work/families.txt"
      continue
    fi
    timeout 120 "$bin" --device "$device" --model-dir "$dir/base" --sentences "$work/sentences.txt" \
      --n "$n" --threads "$threads" --repeats 2 --throughput-only --json \
      >"$work/families_${family}_trainyard.json" 2>/dev/null || true
    timeout 120 "$py" "$STAGE/gpu_check_peer.py" bench --model-dir "$dir/base" --sentences "$work/sentences.txt" \
      --device "$device" --n "$n" --batch-size 128 --repeats 2 --dtypes "$dtypes" \
      $([ "$device" = cpu ] && echo "--threads $threads") \
      >"$work/families_${family}_peer.json" 2>/dev/null || true
    rm -rf "$dir"
    "$py" - "$family" "$work/families_${family}_trainyard.json" "$work/families_${family}_peer.json" <<'PY' | tee -a "$work/families.txt"
import json, sys

def load(path):
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001 - report whatever came back
        return {"error": str(e)}

family, ours, peer = sys.argv[1], load(sys.argv[2]), load(sys.argv[3])
peer_sps = {r["dtype"]: r["sentences_per_second"] for r in peer.get("results", [])}
rows = ours.get("throughput", {}).get("results", [])
if not rows:
    print(f"  {family:12} trainyard: {ours.get('error') or ours.get('failures')}; peer: {peer.get('error', 'ok')}")
for r in rows:
    p = peer_sps.get(r["dtype"]) if not r.get("smoke") else None
    ratio = f"{r['sentences_per_second'] / p:6.2f}x" if p else "     -"
    print(f"  {family:12} {r['dtype']:5} {r['path']:14} trainyard {r['sentences_per_second']:9.1f}  peer {p if p else '-':>9}  {ratio}")
PY
  done
}

case "$mode" in
  prepare) prepare ;;
  cpu)
    prepare
    PYTHON="${PYTHON:-$TRAINYARD_VENV/bin/python}" run_check cpu
    ;;
  device) cd "$ROOT" && run_check cuda ;;
esac
