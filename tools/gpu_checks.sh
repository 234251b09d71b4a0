#!/usr/bin/env bash
# Every CUDA measurement of docs/benchmarks in one prepared run, for a session that is lent a GPU for a few minutes.
#
#   OUT=/tmp/gpu bash tools/gpu_checks.sh              # on the GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 OUT=/tmp/gpu bash tools/gpu_checks.sh   # smoke test of this script on a CPU
#
# Steps, each under its own time limit so that one hang does not spend the device time of the others:
#   1. the CUDA tests: a training step under torch.cuda.set_sync_debug_mode("error") for every pixel mixer
#      (tests/test_count_syncs.py) and the CUDA paths of the tests that have one;
#   2. tools/bench_mixers.py --device cuda: per-call times against the lerp floor, timm's Mixup and torchvision's
#      v2 MixUp / CutMix (docs/benchmarks/mixers.md);
#   3. tools/bench_train.py --device cuda: the step of every mixer against a mixup step and MixClassifier against a
#      bare loop with timm's Mixup (docs/benchmarks/train.md), bf16-mixed.
# Results (markdown and JSON) and a log of each step go to $OUT. The script goes on after a failed step and exits
# non-zero at the end if any failed. PYTHON picks the interpreter (default: python3; the machine needs openmix's
# dependencies importable, see ../shared/tools/gpu/README.md for the wheels it may lack).
set -u
OUT=${OUT:-gpu_results}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
QUICK=${QUICK:-}
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
failed=0

step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
        echo "ok     $name ($((SECONDS - start)) s)"
    else
        echo "FAILED $name (exit $?, $((SECONDS - start)) s): see $OUT/$name.log"
        tail -n 5 "$OUT/$name.log"
        failed=1
    fi
}

if [ "$DEVICE" != cpu ]; then
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
        || exit 2
fi
quick=()
[ -n "$QUICK" ] && quick=(--quick)
step cuda_tests 240 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_count_syncs.py tests/test_transport.py \
    tests/test_bench_tools.py -m "not slow"
step bench_mixers 300 "$PYTHON" tools/bench_mixers.py --device "$DEVICE" "${quick[@]}" --out "$OUT/mixers_$DEVICE.md"
step bench_train 300 "$PYTHON" tools/bench_train.py --device "$DEVICE" "${quick[@]}" --out "$OUT/train_$DEVICE.md"
exit $failed
