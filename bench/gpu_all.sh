#!/usr/bin/env bash
# Every benchmark on a GPU machine, plus the opt-in GPU tests, in one go: how the GPU rows of
# docs/benchmarks.md were made. Each part has its own time limit and log; one failing part
# does not stop the others.
#   bash bench/gpu_all.sh OUT_DIR            # on the GPU machine, from the repository root
#   DEVICE=cpu SMALL=1 bash bench/gpu_all.sh /tmp/x   # a quick dry run of the plumbing on a CPU
set -u
OUT=${1:-bench_out/gpu}
WORK=${WORK:-$OUT/work}  # generated inputs and stores
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
if [ -n "${SMALL:-}" ]; then
    VIDEOS=(--n 2 --workers 1); IMAGES=(--n 8); TRAIN=(--model t5-small --step-model t5-small --steps 2 --step-steps 2 --workers 0,1)
else
    VIDEOS=(--n 12 --workers 2,4,8); IMAGES=(--n 256); TRAIN=(--steps 40 --step-steps 20 --workers 0,4)
fi

part() {  # part NAME SECONDS COMMAND...: run it with a time limit, log to OUT/NAME.log
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date +%T)): $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "=== $name: exit $rc ($(date +%T))"
}

command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
part train "${T_TRAIN:-150}" "$PY" bench/train_step.py --device "$DEVICE" "${TRAIN[@]}" --out-dir "$WORK" \
    --json "$OUT/train.json"
part videos "${T_VIDEOS:-200}" "$PY" bench/extract_videos.py --device "$DEVICE" "${VIDEOS[@]}" --out-dir "$WORK" \
    --json "$OUT/videos.json"
part images "${T_IMAGES:-120}" "$PY" bench/extract_images.py --device "$DEVICE" "${IMAGES[@]}" --out-dir "$WORK" \
    --json "$OUT/images.json"
if [ "$DEVICE" != cpu ]; then
    part gpu_tests "${T_TESTS:-90}" "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
fi
rm -rf "$WORK"
