#!/usr/bin/env bash
# Every benchmark on a GPU machine, plus the opt-in GPU tests, in one go: how the GPU rows of
# docs/benchmarks.md were made. Each part has its own time limit and log; one failing part
# does not stop the others.
#   bash bench/gpu_all.sh OUT_DIR            # on the GPU machine, from the repository root
#   PARTS="decode mfu" bash bench/gpu_all.sh OUT_DIR   # issue #18's GPU parts alone (an estimated 10 minutes)
#   DEVICE=cpu SMALL=1 bash bench/gpu_all.sh /tmp/x   # a quick dry run of the plumbing on a CPU
# PARTS (default: all of them): train videos images decode mfu gpu_tests. decode: `vl extract images`
# with JPEGs decoded on the GPU against the forward alone (and the CPU decode) for RN101 grids and
# ViT-B/32 at N=4096, and the host's store writes (bench/store_write.py); mfu: FLOPs/sample and MFU of full fine-tuning and the single adapter at the
# paper's batch sizes, eager, fp32, fused AdamW and torch.compile (bench/train_step.py --part mfu).
set -u
OUT=${1:-bench_out/gpu}
WORK=${WORK:-$OUT/work}  # generated inputs and stores
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
PARTS=" ${PARTS:-train videos images decode mfu gpu_tests} "
if [ -n "${SMALL:-}" ]; then
    VIDEOS=(--n 2 --workers 1); IMAGES=(--n 8); TRAIN=(--model t5-small --step-model t5-small --steps 2 --step-steps 2 --workers 0,1)
    DECODE=(--n 8); MFU=(--step-model t5-small --mfu-batch 4 --mfu-steps 1)
else
    VIDEOS=(--n 12 --workers 2,4,8); IMAGES=(--n 256); TRAIN=(--steps 40 --step-steps 20 --workers 0,4)
    DECODE=(--n 4096); MFU=(--mfu-steps 10)
fi
[ "$DEVICE" = cpu ] && DECODE+=(--decode cpu) && MFU+=(--flops-only)

part() {  # part NAME SECONDS COMMAND...: run it with a time limit, log to OUT/NAME.log (if NAME's group is in PARTS)
    local name=$1 limit=$2; shift 2
    case "$PARTS" in *" ${name%%_*} "*|*" $name "*) ;; *) return ;; esac
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
part decode_rn101 "${T_DECODE:-150}" "$PY" bench/extract_images.py --device "$DEVICE" --model RN101 "${DECODE[@]}" \
    --skip reference,4n --out-dir "$WORK" --json "$OUT/decode_rn101.json"
part decode_vitb32 "${T_DECODE:-150}" "$PY" bench/extract_images.py --device "$DEVICE" --model ViT-B-32 "${DECODE[@]}" \
    --skip reference,4n --out-dir "$WORK" --json "$OUT/decode_vitb32.json"
part decode_store "${T_STORE:-60}" "$PY" bench/store_write.py --n "${DECODE[1]}" --repeat 3 --json "$OUT/store_write.json"
part mfu "${T_MFU:-330}" "$PY" bench/train_step.py --part mfu --device "$DEVICE" --compile --fused "${MFU[@]}" \
    --out-dir "$WORK" --json "$OUT/mfu.json"
if [ "$DEVICE" != cpu ]; then
    part gpu_tests "${T_TESTS:-90}" "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -s
fi
rm -rf "$WORK"
