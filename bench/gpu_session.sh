#!/usr/bin/env bash
# The one command a GPU session runs (issue 14), from the repository root, through the device tool:
#
#     bash bench/gpu_session.sh            # CUDA tests, GPU smoke, short GPU figures: ends within ~9 minutes
#     bash bench/gpu_session.sh suite      # a second call: the whole test suite with CUDA visible
#     bash bench/gpu_session.sh compile    # a second call: every torch.compile case of the smoke (minutes each)
#
# (device tool: carry [".whl"] when the repo has the wheels of what the GPU image lacks; see BENCHMARKS.md § GPU.)
# Everything lands in $OUT (default ./gpu-out), at most 2 folders down and 8 files, which is what the
# device tool brings back: session.log, pytest.log, smoke/smoke.json, smoke/smoke.log, suite.json, suite.log.
# Every step has its own `timeout`; a step that fails or times out does not stop the next one.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT/smoke"
log="$OUT/session.log"
: >"$log"
say() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$log"; }

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tee -a "$log"
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

say "repo $(git rev-parse --short HEAD 2>/dev/null || echo '?'); PYTHONPATH=$PYTHONPATH"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log"
python3 -c "import torch, torchvision, omegaconf; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'gpu', torch.cuda.is_available(), 'torchvision', torchvision.__version__, 'omegaconf', omegaconf.__version__)" \
    2>&1 | tee -a "$log"

status=0
step() {  # step NAME SECONDS COMMAND...: time-boxed, its exit code logged, never fatal to the session
    local name=$1 seconds=$2
    shift 2
    say "== $name (limit ${seconds}s): $*"
    local started=$SECONDS
    timeout -k 10 "$seconds" "$@"
    local rc=$?
    [ $rc -ne 0 ] && status=1
    say "== $name: exit $rc after $((SECONDS - started))s"
}

if [ "${1:-}" = "suite" ]; then
    # The whole suite with CUDA visible (tests with train.device=auto then run on the GPU), 8 workers.
    step pytest-all 540 bash -o pipefail -c "python3 -m pytest -q -n 8 -p no:cacheprovider tests 2>&1 | tee '$OUT/pytest.log'"
    exit $status
fi

if [ "${1:-}" = "compile" ]; then
    # The compile cases the first call's budget cut (each against its eager run): up to ~9 minutes.
    step gpu-smoke-compile 560 bash -o pipefail -c "python3 bench/gpu_smoke.py --out '$OUT/smoke' --only compile \
        --budget-s 520 2>&1 | tail -n 40"
    exit $status
fi

# 1. The tests that branch on CUDA: every test of the files with a `torch.cuda.is_available()` skip or
#    branch (no -x: one call of GPU time should show every failure, not the first).
step pytest-cuda 90 bash -o pipefail -c "python3 -m pytest -q -p no:cacheprovider tests/test_bench_cli.py \
    tests/test_tensor_loader.py tests/test_distributed_unit.py -rs 2>&1 | tee '$OUT/pytest.log'"

# 2. The GPU smoke (bench/gpu_smoke.py): its own budget, then 30 s for the case in flight to end.
step gpu-smoke 330 bash -o pipefail -c "python3 bench/gpu_smoke.py --out '$OUT/smoke' --budget-s 300 2>&1 \
    | tail -n 40"

# 3. Short GPU figures (bench/gpu_suite.py): 10,000 images, 2 epochs, no compile rows (their compilation
#    alone can take minutes; run `python3 bench/gpu_suite.py --json ...` in a call of its own for those).
step gpu-suite 100 bash -o pipefail -c "python3 bench/gpu_suite.py --epochs 2 --images 10000 --skip-compile \
    --json '$OUT/suite.json' 2>&1 | tee '$OUT/suite.log'"

say "session done, exit $status"
exit $status
