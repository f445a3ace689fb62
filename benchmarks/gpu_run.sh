#!/usr/bin/env bash
# One whole GPU measurement run, sized to finish within 8 minutes on one H100 / H200.
#
#   benchmarks/gpu_run.sh [OUT_DIR]             # default: $OUT, else runs/gpu_run
#   COMPILED=1 benchmarks/gpu_run.sh [OUT_DIR]  # only the torch.compile options (a run of its
#                                               # own), each with COMPILE_LIMIT s (default 240)
#   REHEARSAL=1 benchmarks/gpu_run.sh /tmp/x    # on a CPU: small networks, 2 iterations, to
#                                               # check the script before spending GPU time
#
# What it does, in order, each step under its own time limit (a slow compile cannot eat the
# run) and only while the whole run's budget (BUDGET seconds, default 500) lasts:
#   1. installs the wheels in .whl/ (git-ignored; what the GPU image lacks, e.g. nibabel) into
#      /tmp/site, and records the GPU, driver and versions;
#   2. the GPU tests (tests/gpu): the CUDA-graphed iteration against the eager one, and the
#      batched streams against separate calls (float32 and bf16);
#   3. benchmarks/train_step.py for the default path (CUDA graph, auto), the eager path and the
#      published call order, fp32 and bf16, 8 + 8 and 32 + 32; then the CUDA-graph variants;
#   4. a torch.profiler summary (kernels per iteration, GPU-busy fraction) of those paths,
#      bf16 at 8 + 8;
#   5. the training DataLoader's rate with the default workers (benchmarks/data_pipeline.py);
#   6. the other eager options as the budget allows;
#   7. benchmarks/gpu_report.py: $OUT/gpu_report.md (tables, targets) from $OUT/rows.jsonl.
# With COMPILED=1 only the compiled options run (torch.compile inside the graph and eager).
# Everything lands in OUT_DIR: gpu_report.md, rows.jsonl, run.log (all output).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-runs/gpu_run}}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/run.log"
ROWS="$OUT_DIR/rows.jsonl"
: >"$ROWS"
: >"$LOG"
BUDGET=${BUDGET:-450}
COMPILE_LIMIT=${COMPILE_LIMIT:-240}
STARTED=$SECONDS
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled

PY=${PYTHON:-python3}
if [[ "${REHEARSAL:-0}" == 1 ]]; then
    BENCH=(--device cpu --small --iterations 2 --warmup 4)
    BATCHES=(--batch 2)
    PROFILE=1 PROFILE_BATCH=2
else
    BENCH=(--device gpu --iterations 10 --warmup 5)
    BATCHES=(--batch 8 --batch 32)
    PROFILE=2 PROFILE_BATCH=8
fi

if compgen -G ".whl/*.whl" >/dev/null && [[ "${REHEARSAL:-0}" != 1 ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}

# step NAME LIMIT COMMAND...: run COMMAND under LIMIT seconds if the budget still allows it.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - STARTED)))
    if ((left < 20)); then
        echo "== $name: skipped, the run's budget is spent" | tee -a "$LOG"
        echo "{\"skipped\": \"$name\", \"why\": \"run budget spent\"}" >>"$ROWS"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit} s, $((SECONDS - STARTED)) s into the run)" | tee -a "$LOG"
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$LOG" | grep -E \
        "^(=|\[|option|[a-z_]+ +(32-true|bf16-mixed)|  profile|training DataLoader|FAILED|PASSED|[0-9]+ (passed|failed))"
    local status=${PIPESTATUS[0]}
    if ((status == 124 || status == 137)); then
        echo "== $name: stopped at its ${limit} s limit" | tee -a "$LOG"
        echo "{\"skipped\": \"$name\", \"why\": \"stopped at its ${limit} s limit\"}" >>"$ROWS"
    elif ((status != 0)); then
        echo "== $name: exit status $status (see run.log)" | tee -a "$LOG"
    fi
}

bench() {
    local name=$1 limit=$2
    shift 2
    local options=()
    for option in "$@"; do options+=(--option "$option"); done
    step "$name" "$limit" "$PY" benchmarks/train_step.py "${BENCH[@]}" "${BATCHES[@]}" \
        --json "$ROWS" --precision bf16-mixed --precision 32-true "${options[@]}"
}

{
    echo "== machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
    "$PY" -c "import torch, lightning, timm; print('torch', torch.__version__, '| lightning', \
lightning.__version__, '| timm', timm.__version__, '| cuda', torch.version.cuda, '|', \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    date -u +"%Y-%m-%d %H:%M UTC"
} 2>&1 | tee -a "$LOG"

if [[ "${COMPILED:-0}" != 1 ]]; then
    if [[ "${REHEARSAL:-0}" == 1 ]]; then
        step "GPU tests (CPU rehearsal)" 240 env ADVMIM_GPU_TEST_REHEARSAL=1 \
            "$PY" -m pytest tests/gpu -q -s -p no:cacheprovider
    else
        step "GPU tests" 150 "$PY" -m pytest tests/gpu -q -s -p no:cacheprovider
    fi
    bench "default, eager and the published order" 120 baseline eager published_order
    bench "CUDA graph variants" 90 fast_graph fast_graph_channels_last graph_published_order
    step "profile" 50 "$PY" benchmarks/train_step.py "${BENCH[@]}" --json "$ROWS" \
        --precision bf16-mixed --batch "$PROFILE_BATCH" --option baseline --option eager \
        --option published_order --iterations 3 --profile "$PROFILE"
    step "data pipeline" 30 "$PY" benchmarks/data_pipeline.py --loader --quick
    bench "eager options" 100 channels_last fused_sgd cudnn_benchmark fused_attention
else
    # torch.compile of the four default networks took longer than 160 s on an H100 machine's
    # 16 cores (2026-11-27): the compiled options run alone, each with its own limit.
    bench "compile inside the CUDA graph" "$COMPILE_LIMIT" fast_compile_graph
    bench "compile (eager)" "$COMPILE_LIMIT" compile
    bench "fast (compiled, eager)" "$COMPILE_LIMIT" fast
fi
"$PY" benchmarks/gpu_report.py "$ROWS" "$LOG" >"$OUT_DIR/gpu_report.md" 2>>"$LOG"
cat "$OUT_DIR/gpu_report.md"
echo "== done in $((SECONDS - STARTED)) s"
