#!/usr/bin/env bash
# The GPU checks of this project, as ONE command for one NVIDIA H100 or H200 (time limits
# add up to 460 s, so it ends within 8 minutes even if every section runs to its limit):
#
#   bash benchmarks/gpu_checks.sh            # raw logs into $OUT (default ./gpu_out)
#   GPU_CHECKS_TINY=1 bash benchmarks/gpu_checks.sh   # the same steps, tiny, on any machine
#
# Each section writes $OUT/<name>.log (command, commit, date, device at the top) and runs
# under its own time limit, so one slow section cannot eat the others' time; a section that
# fails or times out is reported at the end and the others still run. To add a check, add a
# `section NAME SECONDS COMMAND...` line (keep the total under 8 minutes on one card).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
TINY="${GPU_CHECKS_TINY:-0}"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
FAILED=()

section() {  # section NAME SECONDS COMMAND...: run COMMAND, log to $OUT/NAME.log
  local name="$1" limit="$2"; shift 2
  local log="$OUT/$name.log" t0=$SECONDS
  {
    echo "# $name"
    echo "# command: $*"
    echo "# commit: $COMMIT  date: $(date -u +%FT%TZ)  time limit: ${limit}s  tiny: $TINY"
    echo "# device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi: $(nproc) CPU cores")"
  } > "$log"
  timeout --signal=INT --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "# exit status $rc after $((SECONDS - t0)) s" >> "$log"
  echo "[gpu_checks] $name: exit $rc, $((SECONDS - t0)) s -> $log"
  [ "$rc" -eq 0 ] || FAILED+=("$name (exit $rc)")
}

section environment 20 python -c "
import jax, platform
print('jax', jax.__version__, 'backend', jax.default_backend(), jax.devices())
try:
    import torch
    print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
except ImportError:
    print('torch not installed: the PyTorch columns will be empty')
print('python', platform.python_version())
"

if [ "$TINY" = "1" ]; then
  # The same steps at toy size (CPU-friendly): shapes, options and log format are checked.
  section tests 300 python -m pytest -q -x tests/test_sparsity.py tests/test_ops.py \
      -k "layout or radix or bfloat16 or switch"
  section bench_step_resnet32x2_float32 300 python benchmarks/bench_step.py \
      --models resnet32x2 --batch 8 --steps 1 --warmup 1 --dtype float32 \
      --json "$OUT/bench_step_resnet32x2_float32.json"
  section bench_step_resnet50_bfloat16 300 python benchmarks/bench_step.py \
      --models resnet50 --batch 2 --image-size 32 --modes search --steps 1 --warmup 1 \
      --dtype bfloat16 --json "$OUT/bench_step_resnet50_bfloat16.json"
else
  # GPU tests: exact masks in every layout and radix, the conv switch, the bfloat16 step.
  section tests 70 bash -c "python -m pytest -q tests/test_sparsity.py \
      -k 'topk or layout or radix or ste or global' && python -m pytest -q tests/test_ops.py"
  # The benchmark table on the card: search and dense, float32 and bfloat16 (PyTorch
  # float32 and torch.autocast bfloat16 on the same card), batch 256.
  for dtype in float32 bfloat16; do
    section "bench_step_resnet32x2_$dtype" 65 python benchmarks/bench_step.py \
        --models resnet32x2 --batch 256 --steps 10 --warmup 3 --dtype "$dtype" \
        --json "$OUT/bench_step_resnet32x2_$dtype.json"
  done
  for dtype in float32 bfloat16; do
    section "bench_step_resnet50_$dtype" 100 python benchmarks/bench_step.py \
        --models resnet50 --batch 256 --steps 10 --warmup 3 --dtype "$dtype" \
        --json "$OUT/bench_step_resnet50_$dtype.json"
  done
  # Mask cost per layout (the radix search is the 'together' layout's default here).
  section bench_masks 40 python benchmarks/bench_masks.py --skip-step --repeats 5
fi

if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "[gpu_checks] FAILED: ${FAILED[*]}"
  exit 1
fi
echo "[gpu_checks] all sections passed; logs in $OUT"
