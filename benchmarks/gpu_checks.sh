#!/usr/bin/env bash
# The GPU checks of this project, as ONE command for one NVIDIA H100 or H200: the tests that
# need a GPU and bench_step (issue 9), bench_input (issue 10) and bench_nm (issue 12). The time
# limits add up to 475 s, so it ends within 8 minutes even if every section runs to its limit,
# which leaves a 15-minute device lease room for one rerun:
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

section environment 15 python -c "
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
      tests/test_nm.py -k "layout or radix or bfloat16 or switch or hand or reference"
  section bench_step_resnet32x2_float32 300 python benchmarks/bench_step.py \
      --models resnet32x2 --batch 8 --steps 1 --warmup 1 --dtype float32 \
      --json "$OUT/bench_step_resnet32x2_float32.json"
  section bench_step_resnet50_bfloat16 300 python benchmarks/bench_step.py \
      --models resnet50 --batch 2 --image-size 32 --modes search --steps 1 --warmup 1 \
      --dtype bfloat16 --json "$OUT/bench_step_resnet50_bfloat16.json"
  section bench_input 300 python benchmarks/bench_input.py --only cifar --only imagenet \
      --imagenet-files 128 --seconds 2 --json "$OUT/bench_input.json"
  section bench_nm 300 python benchmarks/bench_nm.py --device cpu --batch 1 --repeats 2
else
  # GPU tests: exact masks in every layout and radix, the conv switch, the bfloat16 step.
  section tests 60 bash -c "python -m pytest -q tests/test_sparsity.py \
      -k 'topk or layout or radix or ste or global' && python -m pytest -q tests/test_ops.py \
      && python -m pytest -q tests/test_nm.py -k 'hand or reference or straight or budget_through'"
  # The benchmark table on the card: search and dense, float32 and bfloat16 (PyTorch
  # float32 and torch.autocast bfloat16 on the same card), batch 256.
  for dtype in float32 bfloat16; do
    section "bench_step_resnet32x2_$dtype" 50 python benchmarks/bench_step.py \
        --models resnet32x2 --batch 256 --steps 10 --warmup 3 --dtype "$dtype" \
        --json "$OUT/bench_step_resnet32x2_$dtype.json"
  done
  for dtype in float32 bfloat16; do
    section "bench_step_resnet50_$dtype" 85 python benchmarks/bench_step.py \
        --models resnet50 --batch 256 --steps 10 --warmup 3 --dtype "$dtype" \
        --json "$OUT/bench_step_resnet50_$dtype.json"
  done
  # Mask cost per layout (the radix search is the 'together' layout's default here).
  section bench_masks 25 python benchmarks/bench_masks.py --skip-step --repeats 5
  # The input pipeline feeding the GPU: CIFAR and ImageNet-size JPEGs, ResNet-32 loop with
  # and without prefetch (issue 10).
  section bench_input 70 python benchmarks/bench_input.py --only resnet32 --only cifar \
      --only imagenet --imagenet-files 1024 --seconds 4 --json "$OUT/bench_input_gpu.json"
  # 2:4 sparse tensor cores: the exported jackpot's layers dense vs semi-structured (issue 12).
  section bench_nm 35 python benchmarks/bench_nm.py --repeats 50
fi

if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "[gpu_checks] FAILED: ${FAILED[*]}"
  exit 1
fi
echo "[gpu_checks] all sections passed; logs in $OUT"
