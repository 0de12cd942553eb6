#!/usr/bin/env bash
# Everything that needs a GPU, as ONE command that fits 8 minutes on one H100/H200:
#
#   bash bench/gpu_suite.sh            # all stages, in order of importance, each under its own time limit
#   bash bench/gpu_suite.sh dit parts  # only some stages
#
# Stages (seconds each at most; a stage that runs out is cut and the next one starts):
#   tests     60   GPU tests: CUDA-graph replay (Euler and Heun), fp16 cosine, fused kernels for real
#   dit      150   bench_dit, full preset fp16, B=1 with CFG, L=394 and 1024: eager, static, graph,
#                  graph+triton, and the fp16-vs-fp32 accuracy rows
#   parts     75   bench_encoder (DINOv2-L frames/s), bench_vae (32 s decode), bench_fused
#   pipeline 110   bench_pipeline: full preset, 32 s 720p clip, fp16, the fast path
#   compile   75   bench_dit's torch.compile variants at L=394 (max-autotune compiles take minutes: last)
#
# Results: JSON lines (device, versions, commit) in $V2M_BENCH_RESULTS, default $OUT/results
# when $OUT is set (the device tool's folder: commit them under bench/results/), else
# /tmp/v2m-gpu-suite/results. Logs beside them. Machines without PyAV / soundfile: carry
# wheels in .whl/ (docs/backends.md) and they are installed to /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
log_dir="${OUT:-/tmp/v2m-gpu-suite}"
mkdir -p "$log_dir"
export V2M_BENCH_RESULTS="${V2M_BENCH_RESULTS:-$log_dir/results}"
mkdir -p "$V2M_BENCH_RESULTS"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1

if [ -d .whl ] && ! python3 -c "import av, soundfile" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import v2m.runtime" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$log_dir/gpu.txt"

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests dit parts pipeline compile)
status=0
run() {  # run LIMIT_S NAME CMD...: one step of a stage, cut at its limit, logged
  local limit=$1 name=$2; shift 2
  echo "+ [$name, ${limit}s] $*" | tee -a "$log_dir/suite.log"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log_dir/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 124 ] && echo "gpu_suite: $name cut at ${limit}s" | tee -a "$log_dir/suite.log"
  [ "$rc" -ne 0 ] && status=1
  return 0
}
for stage in "${stages[@]}"; do
  t0=$(date +%s)
  case "$stage" in
    tests)
      run 60 tests python3 -m pytest -q -m gpu -p no:cacheprovider -x tests/runtime tests/kernels ;;
    dit)
      run 150 dit python3 bench/bench_dit.py --variants eager,static,graph,graph+triton --lengths 394,1024 \
        --batches 1 --warmup 3 --iters 20 --accuracy-length 394 ;;
    parts)
      run 30 encoder python3 bench/bench_encoder.py
      run 30 vae python3 bench/bench_vae.py
      run 15 fused python3 bench/bench_fused.py ;;
    pipeline)
      run 110 pipeline python3 bench/bench_pipeline.py --presets full --device cuda --precision fp16 --duration 32 \
        --size 1280x720 --repeats 3 --workdir /tmp/v2m-bench ;;
    compile)
      run 75 compile python3 bench/bench_dit.py --variants eager,graph+compile --lengths 394 --batches 1 \
        --accuracy-steps 0 ;;
    *) echo "gpu_suite.sh: unknown stage '$stage' (tests, dit, parts, pipeline, compile)" >&2; exit 2 ;;
  esac
  echo "gpu_suite: $stage took $(( $(date +%s) - t0 )) s" | tee -a "$log_dir/suite.log"
done
ls -l "$V2M_BENCH_RESULTS" | tee -a "$log_dir/suite.log"
exit $status
