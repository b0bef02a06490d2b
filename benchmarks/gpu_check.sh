#!/usr/bin/env bash
# benchmarks/gpu_check.sh: prove cnnscope's CUDA path (AMP, channels_last, pinned memory, nccl).
#
# Run from the repository root, after `pip install -e .`:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR defaults to reports/gpu-check
#
# Without CUDA (torch.cuda.is_available() is False) it says so and exits 0, doing nothing else.
# With CUDA, for every zoo model (basic dilated tiny ectied egrr swrn; swrn as depth 16, width 4):
#   1. `cnnscope train MODEL --dataset fake --device cuda --amp`: ~220 optimizer steps. The fake
#      dataset is 512 training images (461 after the 10% validation split), so the steps come from
#      --batch-size 32 x --epochs 16 (14 steps an epoch, the last partial batch dropped), with
#      early stopping off; each epoch also validates and checkpoints. Exit code, wall time and
#      metrics.json's images_per_s (training images/s) are recorded. Runs: OUT_DIR/runs/MODEL-gpu.
#   2. `cnnscope bench MODEL --device cuda --format json` (AMP and channels_last by default on CUDA)
#      into OUT_DIR/bench-MODEL.json.
#   3. With 2 or more GPUs: `torchrun --standalone --nproc_per_node=2 -m cnnscope train basic`
#      (DistributedDataParallel over nccl), exit code and wall time recorded.
#   4. One summary table, printed and written to OUT_DIR/summary.md, after nvidia-smi and the
#      torch / CUDA / cuDNN versions. Every command's output is in OUT_DIR/logs/.
# A failed step is recorded and the others still run; each step has a 900 s timeout (exit 124;
# SIGKILL 60 s after the SIGTERM if it is still there).
# Exit status: 0 when every step passed, 1 when any failed.
set -u

OUT=${1:-reports/gpu-check}
MODELS=(basic dilated tiny ectied egrr swrn)
STEP_TIMEOUT=900
EPOCHS=16
BATCH_SIZE=32

if ! command -v python >/dev/null 2>&1 || ! command -v cnnscope >/dev/null 2>&1; then
    echo "gpu_check: python and cnnscope must be on PATH (pip install -e . from the repository root)." >&2
    exit 2
fi
cuda=$(python -c "import torch; print(torch.cuda.is_available())" 2>/dev/null)
if [ "$cuda" != "True" ]; then
    echo "No CUDA device here (torch.cuda.is_available() is False): nothing to check; run this on a machine with a GPU."
    exit 0
fi

mkdir -p "$OUT/logs" "$OUT/runs" || exit 2
FAILURES=()

ctor_args() {  # the constructor keywords of the heavy models' small variants
    case "$1" in
        swrn) echo "--ctor depth=16 --ctor width=4" ;;
        *) echo "" ;;
    esac
}

now() { date +%s.%N; }
elapsed() { python -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

# run_step NAME LOG COMMAND...: run COMMAND under the timeout, output to LOG; sets STEP_RC, STEP_WALL
run_step() {
    local name=$1 log=$2 start end
    shift 2
    echo ">>> $name: $*"
    start=$(now)
    timeout --kill-after=60 "$STEP_TIMEOUT" "$@" >"$log" 2>&1
    STEP_RC=$?
    end=$(now)
    STEP_WALL=$(elapsed "$start" "$end")
    if [ "$STEP_RC" -ne 0 ]; then
        FAILURES+=("$name (exit $STEP_RC$([ "$STEP_RC" -eq 124 ] && echo ", timed out after ${STEP_TIMEOUT} s"); see $log)")
        echo "    FAILED: exit $STEP_RC after ${STEP_WALL} s; last lines of $log:"
        tail -n 15 "$log" | sed 's/^/    | /'
    else
        echo "    ok: ${STEP_WALL} s"
    fi
}

# ---- environment -------------------------------------------------------------------------------
{
    echo "# cnnscope GPU check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
    echo '```'
    nvidia-smi 2>&1 || echo "(nvidia-smi failed)"
    python -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.device_count()} device(s): ' + ', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))" 2>&1
    echo '```'
    echo
} >"$OUT/header.md"
cat "$OUT/header.md"
n_gpus=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

# ---- 1. training and 2. bench, each model -----------------------------------------------------
declare -A TRAIN_RC TRAIN_WALL BENCH_RC
for model in "${MODELS[@]}"; do
    # shellcheck disable=SC2046  # ctor_args is meant to split into words
    run_step "train $model" "$OUT/logs/train-$model.log" \
        cnnscope train "$model" $(ctor_args "$model") --dataset fake --device cuda --amp \
        --epochs "$EPOCHS" --batch-size "$BATCH_SIZE" --recipe early_stop_patience=0 \
        --out "$OUT/runs" --name "$model-gpu" --overwrite
    TRAIN_RC[$model]=$STEP_RC
    TRAIN_WALL[$model]=$STEP_WALL

    # bench's stdout is the JSON alone; its stderr goes to the log
    # shellcheck disable=SC2046,SC2016  # the single quotes are bash -c's own script
    run_step "bench $model" "$OUT/logs/bench-$model.log" \
        bash -c 'out=$1; shift; "$@" >"$out"' _ "$OUT/bench-$model.json" \
        cnnscope bench "$model" $(ctor_args "$model") --device cuda --format json
    BENCH_RC[$model]=$STEP_RC
done

# ---- 3. two processes under torchrun (nccl) -------------------------------------------------------
DDP_LINE="not run: $n_gpus GPU(s), needs 2"
if [ "$n_gpus" -ge 2 ] 2>/dev/null; then
    run_step "torchrun 2 x basic" "$OUT/logs/torchrun-basic.log" \
        torchrun --standalone --nproc_per_node=2 -m cnnscope train basic --dataset fake --device cuda --amp \
        --epochs "$EPOCHS" --batch-size "$BATCH_SIZE" --out "$OUT/runs" --name basic-gpu-ddp --overwrite
    DDP_LINE="exit $STEP_RC, ${STEP_WALL} s wall, $(python -c "
import json, sys
try:
    print(f\"{json.load(open(sys.argv[1]))['images_per_s']:,.0f} images/s (run basic-gpu-ddp)\")
except Exception as e:
    print(f'no metrics.json ({type(e).__name__})')" "$OUT/runs/basic-gpu-ddp/metrics.json")"
fi

# ---- 4. summary ---------------------------------------------------------------------------------
rows=""
for model in "${MODELS[@]}"; do
    rows+="$model ${TRAIN_RC[$model]} ${TRAIN_WALL[$model]} ${BENCH_RC[$model]}"$'\n'
done
python - "$OUT" "$rows" >"$OUT/table.md" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])

def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}

def num(value, fmt=",.0f"):
    return format(value, fmt) if isinstance(value, (int, float)) else "-"

print("| model | train exit | train wall (s) | train images/s | best val acc (%) "
      "| bench exit | bench train images/s | bench infer images/s | peak fraction | peak memory (MB) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for line in sys.argv[2].splitlines():
    model, train_rc, wall, bench_rc = line.split()
    metrics = load(out / "runs" / f"{model}-gpu" / "metrics.json")
    bench = load(out / f"bench-{model}.json")
    acc = metrics.get("best_val_acc")
    print(f"| {model} | {train_rc} | {wall} | {num(metrics.get('images_per_s'))} | {num(acc, '.2f')} "
          f"| {bench_rc} | {num(bench.get('train_images_per_s'))} | {num(bench.get('infer_images_per_s'))} "
          f"| {num(bench.get('peak_fraction'), '.1%')} | {num(bench.get('peak_memory_mb'))} |")
EOF
{
    echo "Training: \`cnnscope train MODEL --dataset fake --device cuda --amp --epochs $EPOCHS --batch-size $BATCH_SIZE"
    echo "--recipe early_stop_patience=0\` (swrn with \`--ctor depth=16 --ctor width=4\`), ~220 steps;"
    echo "train images/s is metrics.json's images_per_s, best val acc its best_val_acc. Bench:"
    echo "\`cnnscope bench MODEL --device cuda --format json\` (AMP, channels_last); peak fraction = achieved"
    echo "training FLOP/s over the GPU's float32 peak (an 8192x8192 matmul), measured once and cached."
    echo
    cat "$OUT/table.md"
    echo
    echo "torchrun --standalone --nproc_per_node=2 (nccl), basic: $DDP_LINE"
    echo
    if [ ${#FAILURES[@]} -eq 0 ]; then
        echo "All steps passed."
    else
        echo "Failed steps (${#FAILURES[@]}):"
        for failure in "${FAILURES[@]}"; do echo "- $failure"; done
    fi
} >"$OUT/results.md"
cat "$OUT/header.md" "$OUT/results.md" >"$OUT/summary.md"
echo
cat "$OUT/results.md"
echo
echo "Summary written to $OUT/summary.md"
[ ${#FAILURES[@]} -eq 0 ]
