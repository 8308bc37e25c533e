#!/usr/bin/env bash
# Issue 15's speed check on a lent GPU (an H200): one short prepared script, about 7.5 minutes at most.
#
#   bash benchmarks/gpu_speed.sh          # from the checkout's root, on the GPU machine
#
# Device tool: run(command="bash benchmarks/gpu_speed.sh", carry=[".whl"], timeout_s=540).
#
# It runs, under that machine's python3 (JAX with CUDA, PyTorch; no TensorFlow, so no --pipeline):
#   1. python -m benchmarks.speed --size=512 --batch=16 --infer_batch=32 --models=resnet34_unet
#      (with PEER=1 also --peer --peer_precisions=bf16: smp's Unet("resnet34") with channels_last, bf16
#      autocast and torch.compile in the same run; its compilations take minutes, so give it BUDGET_S=540
#      and expect run 3 to be skipped)
#   2. the light models: light_unet:mobilenetv3_small,ultralight_unet
#   3. if at least MIN_LAST_S seconds are left: encoder_unet:mobilenetv3_small,light_unet:mobilenetv3_large
# Each is capped by `timeout` so the whole stays inside BUDGET_S (compilation dominates: every model
# compiles 2 train steps and 4 forward passes); a capped run keeps the JSON lines it printed, one per
# measurement, flushed as it goes. If run 1 fails under pmap before any train line (an error, not the
# cap), it is rerun once with --parallelism=jit.
#
# Writes to $OUT (at most 8 files): speed.jsonl (every JSON line), tables.md (one Markdown table over all
# runs: benchmarks.speed --table_from), stdout_<run>.txt, stderr.log, env.txt (nvidia-smi, python, jax
# devices). The table is printed at the end.
#
# That machine's python3 lacks ml_collections (and segmentation_models_pytorch, for the peer): both are
# pure-Python wheels, kept in the checkout's .whl/ (ignored through .git/info/exclude) and carried. To make
# them again here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0 segmentation_models_pytorch==0.6.0
#
# Knobs (environment): OUT, PYTHON (python3), BUDGET_S (450), PEER (0 | 1 | auto: if torch and smp import),
# STEPS (10), WARMUP (3),
# MIN_LAST_S (120); for a smoke test of this script on a CPU only: ALLOW_CPU=1 SIZE=32 BATCH=2 INFER_BATCH=2.

set -u
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/veinjax_gpu_speed}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
PEER=${PEER:-0}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
MIN_LAST_S=${MIN_LAST_S:-120}
SIZE=${SIZE:-512}
BATCH=${BATCH:-16}
INFER_BATCH=${INFER_BATCH:-32}
COMMON=("--size=$SIZE" "--batch=$BATCH" "--infer_batch=$INFER_BATCH" "--steps=$STEPS" "--warmup=$WARMUP")
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
START=$(date +%s)

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/veinjax_site \
      .whl/*.whl >>"$OUT/stderr.log" 2>&1 && export PYTHONPATH="/tmp/veinjax_site${PYTHONPATH:+:$PYTHONPATH}"
fi

{
  date -u
  nvidia-smi 2>&1 || true
  "$PY" --version 2>&1
  "$PY" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" 2>&1
} >"$OUT/env.txt"
cat "$OUT/env.txt"

if ! "$PY" -c "import ml_collections, flax, optax, orbax.checkpoint" >>"$OUT/stderr.log" 2>&1; then
  echo "gpu_speed: veinjax's dependencies do not import (ml_collections missing? carry .whl/): see stderr.log"
  tail -5 "$OUT/stderr.log"
  exit 2
fi
if [ "${ALLOW_CPU:-0}" != 1 ] && ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() == 'cpu')" 2>>"$OUT/stderr.log"; then
  echo "gpu_speed: JAX sees no accelerator here; not running a 512x512 CPU benchmark."
  exit 2
fi

PEER_ARGS=()
if [ "$PEER" = 1 ] || { [ "$PEER" = auto ] && "$PY" -c "import torch, segmentation_models_pytorch" 2>/dev/null; }; then
  PEER_ARGS=(--peer --peer_precisions=bf16)
fi

# bench NAME CAP_S ARGS...: one benchmarks.speed run, capped at min(CAP_S, the time left).
bench() {
  local name=$1 cap=$2
  shift 2
  local limit
  limit=$(left)
  [ "$limit" -gt "$cap" ] && limit=$cap
  if [ "$limit" -lt 30 ]; then
    echo "gpu_speed: $name skipped ($(left) s left)"
    return 1
  fi
  echo "gpu_speed: $name (at most $limit s): $*"
  echo "== $name: $*" >>"$OUT/stderr.log"
  timeout -k 10 "$limit" "$PY" -m benchmarks.speed "${COMMON[@]}" "$@" >"$OUT/stdout_$name.txt" 2>>"$OUT/stderr.log"
  local rc=$?
  grep '^{' "$OUT/stdout_$name.txt" >>"$OUT/speed.jsonl"
  echo "gpu_speed: $name rc=$rc, $(grep -c '^{' "$OUT/stdout_$name.txt") JSON lines, $(left) s left"
  return $rc
}

: >"$OUT/speed.jsonl"
CAP1=240
[ ${#PEER_ARGS[@]} -gt 0 ] && CAP1=390
bench resnet34_unet "$CAP1" --models=resnet34_unet "${PEER_ARGS[@]}"
rc=$?
# A failure (not the cap: 124, 137) before any train line: once more under jit instead of pmap.
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 137 ] && ! grep -q '"kind": "train"' "$OUT/stdout_resnet34_unet.txt"; then
  tail -20 "$OUT/stderr.log"
  bench resnet34_unet_jit 240 --models=resnet34_unet --parallelism=jit
fi
bench light 200 --models=light_unet:mobilenetv3_small,ultralight_unet
if [ "$(left)" -ge "$MIN_LAST_S" ]; then
  bench light_more "$(left)" --models=encoder_unet:mobilenetv3_small,light_unet:mobilenetv3_large
fi

# One table over every run (a capped run printed none of its own).
"$PY" -m benchmarks.speed --table_from="$OUT/speed.jsonl" >"$OUT/tables.md" 2>>"$OUT/stderr.log"
echo
cat "$OUT/tables.md"
echo "gpu_speed: $(wc -l <"$OUT/speed.jsonl") JSON lines in $OUT/speed.jsonl, $(( $(date +%s) - START )) s in all"
