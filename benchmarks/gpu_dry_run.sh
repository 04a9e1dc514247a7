#!/usr/bin/env bash
# The GPU checks' dry run on the CPU, against the GPU image's package set (not this machine's):
#
#   bash benchmarks/gpu_dry_run.sh      # 6-10 min on 2 cores (+ ~2 min the first time: the venv)
#
# 1. A venv .gpu_dry/image (git-ignored) with Python 3.12 and the image's packages at fixed
#    versions (IMAGE_SET: jax/jaxlib 0.11.2 CPU, torch 2.11.0 / torchvision 0.26.0 -- PyPI has
#    only their CUDA 13 builds for cp312 manylinux x86_64, which run on the CPU -- flax,
#    optax, orbax-checkpoint, chex, numpy, timm, pillow, tqdm, absl-py and what they depend
#    on) and nothing else of the project's: no ml_collections, grain, simplejpeg, pytest,
#    transformers, gguf, tokenizers (the bundle brings them).
# 2. The committed tree (git archive of HEAD as the script starts; GPU_DRY_RUN_TREE=work: the working tree as it is,
#    which is what a device run ships) exported to .gpu_dry/tree.
# 3. WITHOUT the bundle: `GPU_CHECKS_TINY=1 bash benchmarks/gpu_checks.sh` must stop at the
#    preflight within 30 s, naming the missing packages
#    -> benchmarks/results/gpu_preflight_no_bundle_<commit>.log
# 4. With gpu_wheels/ (made by benchmarks/gpu_wheels.sh if absent): the GPU mode must stop at
#    the preflight because JAX sees no GPU, then `GPU_CHECKS_TINY=1 bash
#    benchmarks/gpu_checks.sh` must pass every section
#    -> benchmarks/results/gpu_dry_run_<commit>.log (versions at the top, each section's log
#    and the venv's package list at the end)
# Exit status 0 when all three behave as they must.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DRY="$ROOT/.gpu_dry"
IMAGE="$DRY/image"
TREE="$DRY/tree"
RESULTS="$ROOT/benchmarks/results"
# The GPU image's packages (the versions the image has where the issue names them; the others
# at the newest release compatible with jax 0.11.2 when this was written).
IMAGE_SET=(jax==0.11.2 jaxlib==0.11.2 torch==2.11.0 torchvision==0.26.0 flax==0.12.12
           optax==0.2.8 orbax-checkpoint==0.12.8 chex==0.1.92 numpy==2.5.5 timm==1.0.31
           pillow==13.0.0 tqdm==4.70.1 absl-py==2.5.1)
PY312="${GPU_DRY_PYTHON:-$(ls /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)}"
PY312="${PY312:-$(command -v python3.12)}"
[ -x "$PY312" ] || { echo "[gpu_dry_run] no Python 3.12 (set GPU_DRY_PYTHON)"; exit 1; }

COMMIT="$(git rev-parse --short HEAD)"
mkdir -p "$DRY" "$RESULTS"
LOG="$RESULTS/gpu_dry_run_$COMMIT.log"
NO_BUNDLE_LOG="$RESULTS/gpu_preflight_no_bundle_$COMMIT.log"

# --- 1. the image-like venv --------------------------------------------------------------------
if [ ! -x "$IMAGE/bin/python" ]; then
  "$PY312" -m venv "$IMAGE" || exit 1
fi
echo "[gpu_dry_run] image-like venv $IMAGE: ${IMAGE_SET[*]}"
# torch's nvidia-* / cuda-* dependencies come with it (the CUDA build), as in the image.
"$IMAGE/bin/python" -m pip install -q --disable-pip-version-check "${IMAGE_SET[@]}" \
    2> >(grep -v "is ignored: it is neither" >&2) || exit 1
for pkg in ml_collections grain simplejpeg pytest transformers gguf tokenizers; do  # the image lacks them: so must this
  if "$IMAGE/bin/python" -c "import $pkg" 2>/dev/null; then
    echo "[gpu_dry_run] $pkg is installed in $IMAGE, which the GPU image lacks: remove $IMAGE and rerun"
    exit 1
  fi
done
VERSIONS="$("$IMAGE/bin/python" -c '
import importlib.metadata as md, platform, sys
print(f"python {platform.python_version()} ({sys.base_prefix})")
print("jax", md.version("jax"), "jaxlib", md.version("jaxlib"), "(CPU)")
print("torch", md.version("torch"), "torchvision", md.version("torchvision"), "(cu130 builds, on the CPU)")')"

# --- 2. the tree --------------------------------------------------------------------------------
rm -rf "$TREE" && mkdir -p "$TREE"
if [ "${GPU_DRY_RUN_TREE:-head}" = "work" ]; then
  TREE_NOTE="the working tree at $COMMIT ($(git status --porcelain | wc -l) paths differ from it)"
  git ls-files -z -c -o --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$TREE"
else
  TREE_NOTE="commit $COMMIT (git archive $COMMIT, clean)"
  # The commit read at the start, not HEAD now: others may commit while the venv installs.
  git archive "$COMMIT" | tar -xf - -C "$TREE"
fi

header() {  # header TITLE: the top of a log
  echo "# $1"
  echo "# date: $(date -u +%FT%TZ)  tree: $TREE_NOTE"
  echo "# machine: $(nproc) CPU cores, no GPU; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "$VERSIONS" | sed 's/^/# /'
}
run_checks() {  # run_checks OUTDIR [VAR=VALUE...]: gpu_checks.sh in the tree on the image venv
  local out="$1"; shift
  rm -rf "$out"
  (cd "$TREE" && env "$@" OUT="$out" GPU_CHECKS_PYTHON="$IMAGE/bin/python" \
       GPU_CHECKS_ENV="$DRY/checks_env" GPU_CHECKS_COMMIT="$COMMIT" \
       bash benchmarks/gpu_checks.sh)
}
STATUS=0

# --- 3. without the bundle: the preflight must stop the script, naming the packages ---------
rm -rf "$TREE/gpu_wheels"
{
  header "gpu_checks.sh on the image's packages WITHOUT gpu_wheels/: must stop at the preflight in < 30 s"
  echo "# command: GPU_CHECKS_TINY=1 bash benchmarks/gpu_checks.sh"
  t0=$(date +%s.%N)
  run_checks "$DRY/out_no_bundle" GPU_CHECKS_TINY=1
  rc=$?
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  echo "# exit status $rc after $secs s"
  echo "# --- $DRY/out_no_bundle/preflight.log:"
  cat "$DRY/out_no_bundle/preflight.log"
  if [ "$rc" -eq 2 ] && grep -q "STOP.*missing packages" "$DRY/out_no_bundle/preflight.log" \
       && awk -v s="$secs" 'BEGIN {exit !(s < 30)}'; then
    echo "# as required: stopped at the preflight in $secs s, naming the missing packages"
  else
    echo "# NOT as required (exit $rc, $secs s)"
    exit 1
  fi
} 2>&1 | tee "$NO_BUNDLE_LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

# --- 4. with the bundle: no GPU must stop the GPU mode; the tiny checks must pass ------------
[ -f gpu_wheels/requirements.txt ] || bash benchmarks/gpu_wheels.sh || exit 1
cp -r gpu_wheels "$TREE/gpu_wheels"
{
  header "gpu_checks.sh dry run on the image's packages + gpu_wheels/ ($(du -sh gpu_wheels | cut -f1), $(ls gpu_wheels/*.whl | wc -l) wheels)"
  echo "# 1) GPU mode on this CPU: must stop at the preflight (JAX sees no GPU)"
  echo "# command: bash benchmarks/gpu_checks.sh"
  t0=$SECONDS
  run_checks "$DRY/out_no_gpu"
  rc=$?
  if [ "$rc" -eq 2 ] && grep -q "STOP.*JAX sees no GPU" "$DRY/out_no_gpu/preflight.log"; then
    echo "# as required: exit $rc after $((SECONDS - t0)) s"
  else
    echo "# NOT as required: exit $rc"; exit 1
  fi
  echo
  echo "# 2) the tiny checks: every section must pass"
  echo "# command: GPU_CHECKS_TINY=1 bash benchmarks/gpu_checks.sh"
  t0=$SECONDS
  run_checks "$DRY/out" GPU_CHECKS_TINY=1
  rc=$?
  echo "# exit status $rc after $((SECONDS - t0)) s"
  for f in "$DRY"/out/setup.log "$DRY"/out/preflight.log $(ls -tr "$DRY"/out/*.log | grep -v -e /setup.log -e /preflight.log); do
    echo; echo "# ---------- $f"; cat "$f"
  done
  echo; echo "# ---------- the image-like venv (pip freeze of $IMAGE)"
  "$IMAGE/bin/python" -m pip freeze --disable-pip-version-check
  exit "$rc"
} 2>&1 | tee "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1
echo "[gpu_dry_run] logs: ${NO_BUNDLE_LOG#$ROOT/} ${LOG#$ROOT/}; exit $STATUS"
exit "$STATUS"
