#!/usr/bin/env bash
# The GPU checks of this project, as ONE command for one NVIDIA H100 or H200: the tests that
# need a GPU (the GPU's default code paths included), bench_step (CNNs beside PyTorch, ViT-S),
# bench_lm_step (the 2:4 search step of a SmolLM2-135M-shaped LM beside transformers'),
# bench_masks, bench_input and bench_nm (2:4 sparse tensor cores), run on
# the GPU machine's image as it is (Python 3.12, jax/jaxlib 0.11.2 + jax-cuda13 plugins, flax,
# optax, orbax-checkpoint, chex, numpy, pillow, tqdm, absl-py, torch 2.11, torchvision 0.26,
# timm; no network), with the wheels it lacks shipped alongside:
#
#   bash benchmarks/gpu_wheels.sh        # 1. here (network): gpu_wheels/ (~8 MB, git-ignored)
#   bash benchmarks/gpu_dry_run.sh       # 2. here: the image's package set on the CPU, tiny
#                                        #    (log: benchmarks/results/gpu_dry_run_<commit>.log)
#   bash benchmarks/gpu_checks.sh        # 3. on the GPU machine, from the repository root:
#        device run with carry ["gpu_wheels"] and timeout_s 600; logs in $OUT (default ./gpu_out)
#   GPU_CHECKS_TINY=1 bash benchmarks/gpu_checks.sh   # the same steps, tiny, on any machine
#
# First the setup (limit 60 s): a virtual environment in $GPU_CHECKS_ENV (default
# ./.gpu_checks_env) on top of the image's Python ($GPU_CHECKS_PYTHON, default python3) that
# sees the image's packages and gets gpu_wheels/ installed into it with `pip install
# --no-index --find-links gpu_wheels -r gpu_wheels/requirements.txt`: nothing is downloaded,
# the image's own site-packages are never written to, and its jax, torch, CUDA and numpy
# packages are pinned at their installed versions; the project runs from the tree (PYTHONPATH),
# never installed. GPU_CHECKS_SETUP=0 uses the current Python as it is instead.
# Then the preflight (benchmarks/preflight.py, limit 40 s): versions, devices, and an import of
# every jackpot_jax and benchmark module; if JAX sees no GPU (unless GPU_CHECKS_TINY=1) or an
# import fails, the script stops right there with one [gpu_checks] STOP line naming the cause
# (the missing package), exit status 2, so a broken environment costs seconds, not the slot.
# The limits add up to 590 s (setup 60 + preflight 40 + checks 490), so the run ends within
# 10 minutes even if every section runs to its limit; the setup and preflight take ~20-30 s.
# GPU_CHECKS_ONLY='<glob>' runs only the check sections whose names match (setup and
# preflight always run), e.g. GPU_CHECKS_ONLY='bench_lm*'; sections marked EXTRA (the LM step
# through torch.compile, whose cold compile does not fit the budget above) run only when
# GPU_CHECKS_ONLY names them.
#
# Variables: OUT (the logs), GPU_CHECKS_TINY=1, GPU_CHECKS_PYTHON (the base Python),
# GPU_CHECKS_ENV (the environment's folder), GPU_CHECKS_SETUP=0, GPU_CHECKS_COMMIT (the commit
# named in the logs where the tree has no .git), GPU_CHECKS_ONLY (a glob of section names).
#
# Each section writes $OUT/<name>.log (command, commit, date, device at the top) and runs
# under its own time limit, so one slow section cannot eat the others' time; a section that
# fails or times out is reported at the end and the others still run. To add a check, add a
# `section NAME SECONDS COMMAND...` line (keep the checks' total under 8 minutes on one card).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
TINY="${GPU_CHECKS_TINY:-0}"
COMMIT="${GPU_CHECKS_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
FAILED=()

ONLY="${GPU_CHECKS_ONLY:-}"
selected() {  # selected NAME: whether GPU_CHECKS_ONLY (a glob; unset: all) lets NAME run
  # shellcheck disable=SC2053  # $ONLY is a glob on purpose
  [ -z "$ONLY" ] || [ "$1" = setup ] || [ "$1" = preflight ] || [[ "$1" == $ONLY ]]
}
extra_section() {  # extra_section NAME SECONDS COMMAND...: a section only GPU_CHECKS_ONLY runs
  if [ -n "$ONLY" ] && [[ "$1" == $ONLY ]]; then section "$@"; fi
}

section() {  # section NAME SECONDS COMMAND...: run COMMAND, log to $OUT/NAME.log
  local name="$1" limit="$2"; shift 2
  if ! selected "$name"; then
    echo "[gpu_checks] $name: skipped (GPU_CHECKS_ONLY=$ONLY)"
    return 0
  fi
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
  return "$rc"
}

stop() {  # stop MESSAGE: the whole script ends here
  echo "[gpu_checks] STOP: $*"
  exit 2
}

# --- setup: the bundle, in an environment layered on the image's Python ---------------------
BASE_PY="${GPU_CHECKS_PYTHON:-$(command -v python3 || command -v python)}"
ENV_DIR="${GPU_CHECKS_ENV:-$PWD/.gpu_checks_env}"
setup_env() {
  set -e
  echo "base python: $BASE_PY ($("$BASE_PY" -c 'import sys; print(sys.version.split()[0], sys.prefix)'))"
  rm -rf "$ENV_DIR"
  "$BASE_PY" -m venv --without-pip "$ENV_DIR"
  local site
  site="$("$ENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  # The base's package folders, after the environment's own (as --system-site-packages would,
  # but also when the base is itself a virtual environment, as in the dry run).
  "$BASE_PY" -c '
import os, sys
dirs = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs))' > "$site/_gpu_checks_base.pth"
  echo "the image's packages seen through $site/_gpu_checks_base.pth:"; cat "$site/_gpu_checks_base.pth"
  # Pins: the image's jax, torch, CUDA and numpy stay exactly as they are.
  "$ENV_DIR/bin/python" -c '
import importlib.metadata as md, re
pat = re.compile(r"^(jax|jaxlib|jax-cuda.*|jax-plugin.*|torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|numpy)$")
pins = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in md.distributions() if d.metadata["Name"]}
print("\n".join(f"{n}=={v}" for n, v in sorted(pins.items()) if pat.match(n)))' > "$ENV_DIR/image_pins.txt"
  echo "pinned: $(tr '\n' ' ' < "$ENV_DIR/image_pins.txt")"
  if [ ! -f gpu_wheels/requirements.txt ]; then
    echo "no gpu_wheels/ here (make it with bash benchmarks/gpu_wheels.sh, ship it with the tree): nothing installed"
    return 0
  fi
  # No configuration file, no PIP_* variable (--isolated), no index: only the shipped wheels.
  # --no-compile: no byte-compiling of transformers' thousands of modules (most never imported)
  PIP_CONFIG_FILE=/dev/null "$ENV_DIR/bin/python" -m pip install --isolated --no-compile \
      --disable-pip-version-check --no-index --find-links gpu_wheels -c "$ENV_DIR/image_pins.txt" -r gpu_wheels/requirements.txt
}
if [ "${GPU_CHECKS_SETUP:-1}" = "1" ]; then
  export BASE_PY ENV_DIR
  export -f setup_env
  section setup 60 bash -c setup_env \
      || stop "setup failed (see $OUT/setup.log): $(grep -E 'ERROR|Error' "$OUT/setup.log" | head -1)"
  grep -E '^no gpu_wheels' "$OUT/setup.log" | sed 's/^/[gpu_checks] /'
  export PATH="$ENV_DIR/bin:$PATH"
fi
echo "[gpu_checks] $(python -c '
import importlib.metadata as md, platform
def ver(d):
    try:
        return md.version(d)
    except md.PackageNotFoundError:
        return "-"
print("python", platform.python_version(), ", ".join(d + " " + ver(d) for d in ("jax", "jaxlib", "torch", "torchvision")))')"

# --- preflight: seconds to tell whether this environment can run the checks at all ----------
PREFLIGHT_ARGS=()
[ "$TINY" = "1" ] && PREFLIGHT_ARGS=(--cpu-ok)
section preflight 40 python benchmarks/preflight.py ${PREFLIGHT_ARGS[@]+"${PREFLIGHT_ARGS[@]}"}
preflight_rc=$?
grep '^\[preflight\]' "$OUT/preflight.log" | grep -v 'STOP' | sed 's/^/  /'
if [ "$preflight_rc" -ne 0 ]; then
  verdict="$(grep '^\[preflight\] STOP' "$OUT/preflight.log" | tail -1 | sed 's/^\[preflight\] STOP *//')"
  stop "preflight: ${verdict:-exit $preflight_rc (see $OUT/preflight.log)}"
fi

if [ "$TINY" = "1" ]; then
  # The same steps at toy size (CPU-friendly): shapes, options and log format are checked.
  section tests 300 python -m pytest -q -x tests/test_sparsity.py tests/test_ops.py \
      tests/test_nm.py tests/test_gpu_defaults.py \
      -k "layout or radix or bfloat16 or options or hand or reference or gpu or default"
  section bench_step_resnet32x2_float32 300 python benchmarks/bench_step.py \
      --models resnet32x2 --batch 8 --steps 1 --warmup 1 --dtype float32 \
      --torch-variants eager,channels_last --json "$OUT/bench_step_resnet32x2_float32.json"
  section bench_step_resnet50_bfloat16 300 python benchmarks/bench_step.py \
      --models resnet50 --batch 2 --image-size 32 --modes search --steps 1 --warmup 1 \
      --dtype bfloat16 --torch-variants eager,channels_last \
      --json "$OUT/bench_step_resnet50_bfloat16.json"
  section bench_step_vit_small 300 python benchmarks/bench_step.py --models vit_small \
      --batch 2 --steps 1 --warmup 1 --rounds 1 --torch-variants eager \
      --json "$OUT/bench_step_vit_small.json"
  section bench_lm_step 300 python benchmarks/bench_lm_step.py --tiny --batch 2 --seq-len 16 \
      --dtype bfloat16 --steps 1 --rounds 1 --torch-variants eager \
      --json "$OUT/bench_lm_step.json"
  section bench_input 300 python benchmarks/bench_input.py --only cifar --only imagenet \
      --imagenet-files 128 --seconds 2 --json "$OUT/bench_input.json"
  section bench_nm 300 python benchmarks/bench_nm.py --device cpu --batch 1 --repeats 2
else
  # GPU tests, on the GPU (conftest pins the CPU unless JACKPOT_TEST_PLATFORMS says
  # otherwise): exact masks in every layout and radix, the options, the bfloat16 step, and the
  # GPU's default code paths (XLA convolutions, the together layout) against the CPU's.
  section tests 50 env JACKPOT_TEST_PLATFORMS=cuda bash -c "python -m pytest -q \
      tests/test_sparsity.py -k 'topk or layout or radix or ste or global' \
      && python -m pytest -q tests/test_ops.py -k 'not fusion_barrier_adds' \
      && python -m pytest -q tests/test_nm.py -k 'hand or reference or straight or budget_through'"
  section gpu_defaults 30 env JACKPOT_TEST_PLATFORMS=cuda python -m pytest -q \
      tests/test_gpu_defaults.py
  # The benchmark table on the card: search and dense, float32 and bfloat16 (PyTorch eager,
  # channels_last, and torch.autocast bfloat16 on the same card), batch 256; torch.compile
  # in a section of its own (its compile time is the cost).
  for model in resnet32x2 resnet50; do
    limit=45
    section "bench_step_${model}_float32" "$limit" python benchmarks/bench_step.py \
        --models "$model" --batch 256 --steps 10 --warmup 3 --dtype float32 \
        --torch-variants eager,channels_last,autocast --json "$OUT/bench_step_${model}_float32.json"
    section "bench_step_${model}_bfloat16" "$limit" python benchmarks/bench_step.py \
        --models "$model" --batch 256 --steps 10 --warmup 3 --dtype bfloat16 \
        --torch-variants eager,channels_last --json "$OUT/bench_step_${model}_bfloat16.json"
  done
  section bench_step_resnet32x2_compile 50 python benchmarks/bench_step.py \
      --models resnet32x2 --batch 256 --modes search --steps 10 --warmup 3 \
      --torch-variants compile+channels_last --json "$OUT/bench_step_resnet32x2_compile.json"
  # ViT-S/16 at 224 px, batch 256: search and dense, float32 (PyTorch eager and autocast
  # bfloat16 beside it) and bfloat16 (PyTorch eager in bfloat16); timm's model on its side.
  section bench_step_vit_small_float32 30 python benchmarks/bench_step.py \
      --models vit_small --batch 256 --steps 10 --warmup 3 --dtype float32 \
      --torch-variants eager,autocast --json "$OUT/bench_step_vit_small_float32.json"
  section bench_step_vit_small_bfloat16 25 python benchmarks/bench_step.py \
      --models vit_small --batch 256 --steps 10 --warmup 3 --dtype bfloat16 \
      --torch-variants eager --json "$OUT/bench_step_vit_small_bfloat16.json"
  # The LM search step (SmolLM2-135M's shape, random weights: no model file), bfloat16,
  # 8 x 512 tokens, 20 timed steps per side: ours beside transformers' LlamaForCausalLM with
  # straight-through 2:4 masked Linears (eager), tokens/s, memory and the mask's share.
  section bench_lm_step_bfloat16 55 python benchmarks/bench_lm_step.py --batch 8 --seq-len 512 \
      --dtype bfloat16 --steps 10 --rounds 2 --warmup 2 --torch-variants eager \
      --json "$OUT/bench_lm_step_bfloat16.json"
  # EXTRA (GPU_CHECKS_ONLY='bench_lm*'): the same with torch.compile, and ours' profile.
  extra_section bench_lm_step_compile 240 python benchmarks/bench_lm_step.py --batch 8 \
      --seq-len 512 --dtype bfloat16 --steps 10 --rounds 2 --warmup 2 \
      --torch-variants eager,compile --profile --json "$OUT/bench_lm_step_compile.json"
  # Mask cost per layout (the radix search is the 'together' layout's default here).
  section bench_masks 20 python benchmarks/bench_masks.py --skip-step --repeats 5
  # The input pipeline feeding the GPU: CIFAR and ImageNet-size JPEGs, ResNet-32 loop with
  # and without prefetch.
  section bench_input 25 python benchmarks/bench_input.py --only resnet32 --only cifar \
      --only imagenet --imagenet-files 1024 --seconds 3 --json "$OUT/bench_input_gpu.json"
  # 2:4 sparse tensor cores: the exported jackpot's layers dense vs semi-structured.
  section bench_nm 25 python benchmarks/bench_nm.py --repeats 50
fi

if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "[gpu_checks] FAILED: ${FAILED[*]}"
  exit 1
fi
echo "[gpu_checks] all sections passed; logs in $OUT"
