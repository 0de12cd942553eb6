#!/usr/bin/env bash
# Everything that needs a GPU, in stages that each fit one 10-minute device command:
#
#   bash bench/gpu_suite.sh tests      # GPU tests (CUDA graphs, fp16 cosine, fused kernels compiled for real)
#   bash bench/gpu_suite.sh dit        # bench_dit, full preset fp16: eager/static/graph/graph+triton + accuracy
#   bash bench/gpu_suite.sh compile    # bench_dit's torch.compile variants (max-autotune compiles take minutes)
#   bash bench/gpu_suite.sh parts      # bench_fused, bench_encoder (DINOv2-L), bench_vae (32 s)
#   bash bench/gpu_suite.sh pipeline   # bench_pipeline: full preset, 32 s 720p clip, default and --kernels triton
#
# Results are appended to $V2M_BENCH_RESULTS (default bench/results) as JSON lines, with
# device, versions and commit; logs go to $OUT when it is set (the device tool's folder).
# Machines without PyAV / soundfile: carry wheels in .whl/ (see README) and they are
# installed to /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:-tests}"
log_dir="${OUT:-/tmp/v2m-gpu-suite}"
mkdir -p "$log_dir"
export V2M_BENCH_RESULTS="${V2M_BENCH_RESULTS:-$log_dir/results}"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1

if [ -d .whl ] && ! python3 -c "import av, soundfile" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import v2m.runtime" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$log_dir/gpu.txt"

run() { echo "+ $*"; "$@" 2>&1 | tee -a "$log_dir/$stage.log"; }
case "$stage" in
  tests)
    run python3 -m pytest -q -m gpu -p no:cacheprovider
    run python3 -m pytest -q tests/kernels -p no:cacheprovider ;;
  dit)
    run python3 bench/bench_dit.py --variants eager,static,graph,graph+triton ;;
  compile)
    run python3 bench/bench_dit.py --variants eager,compile,graph+compile --lengths 394 --accuracy-steps 0 ;;
  parts)
    run python3 bench/bench_fused.py
    run python3 bench/bench_encoder.py
    run python3 bench/bench_vae.py ;;
  pipeline)
    run python3 bench/bench_pipeline.py --presets full --device cuda --precision fp16 --duration 32 --size 1280x720 \
      --repeats 3 --workdir /tmp/v2m-bench
    run python3 bench/bench_pipeline.py --presets full --device cuda --precision fp16 --duration 32 --size 1280x720 \
      --repeats 3 --workdir /tmp/v2m-bench --fast --kernels triton
    run python3 bench/bench_pipeline.py --presets full --device cuda --precision fp16 --duration 32 --size 1280x720 \
      --repeats 3 --workdir /tmp/v2m-bench --fast --vae-precision fp32 ;;
  *) echo "gpu_suite.sh: unknown stage '$stage' (tests, dit, compile, parts, pipeline)" >&2; exit 2 ;;
esac
