#!/usr/bin/env bash
# The wheel bundle for the GPU machine's image, which cannot fetch packages:
#
#   bash benchmarks/gpu_wheels.sh          # -> gpu_wheels/ (ignored by git), prints its size
#
# The image (Python 3.12, manylinux x86_64) has jax/jaxlib 0.11.2 with the jax-cuda13 plugins,
# flax, optax, orbax-checkpoint, chex, numpy, pillow, tqdm, absl-py, torch 2.11, torchvision
# 0.26 and timm (IMAGE_HAS below). This downloads binary wheels for CPython 3.12 on manylinux
# x86_64 of every dependency of the project (pyproject.toml's [project] dependencies, read
# here, so a new one joins the bundle by itself) and of its optional groups in EXTRAS (``lm``:
# gguf, safetensors, tokenizers) that the image does not have, of the tools the GPU checks run
# (CHECK_TOOLS: pytest, psutil for bench_input, transformers for bench_lm_step's PyTorch
# side), and of their dependencies,
# less the image's packages (numpy, absl-py, ... come along as dependencies and are dropped:
# no jax, torch, CUDA or numpy wheel ever enters the bundle, the script fails if one does).
# It writes gpu_wheels/requirements.txt (the top-level packages, pinned), which
# benchmarks/gpu_checks.sh installs with `pip install --no-index --find-links gpu_wheels`.
#
# Shipping: gpu_wheels/ is ignored by git, so name it in the device run's carried paths
# (carry: ["gpu_wheels"]); carried paths plus the working tree must stay under 64 MiB, which
# the script checks (it fails above SHIP_LIMIT_MIB).
set -euo pipefail
cd "$(dirname "$0")/.."

DEST="${GPU_WHEELS_DIR:-gpu_wheels}"
PY_VERSION="${GPU_WHEELS_PYTHON_VERSION:-3.12}"
PY_TAG="cp${PY_VERSION/./}"
SHIP_LIMIT_MIB=64
# What the GPU image already has (pip's names); never downloaded into the bundle.
IMAGE_HAS="jax jaxlib flax optax orbax-checkpoint chex numpy pillow tqdm absl-py torch torchvision timm"
# What the checks need beyond the package's dependencies (the tests, bench_input, and
# transformers' LlamaForCausalLM for bench_lm_step).
CHECK_TOOLS="pytest psutil transformers"
# pyproject's optional-dependency groups the bundle carries too (the language models' readers).
EXTRAS="lm"
# Never in the bundle, whatever asks for them: the image's jax, torch, CUDA and numpy.
FORBIDDEN_RE='^(jax|jaxlib|jax[-_]cuda.*|jax[-_]plugin.*|torch|torchvision|torchaudio|triton|nvidia[-_].*|cuda[-_].*|numpy)$'

PIP_PY="$(command -v python3 || command -v python)"

# The top-level requirements: pyproject's dependencies not in IMAGE_HAS, plus CHECK_TOOLS.
NEEDS="$("$PIP_PY" - "$IMAGE_HAS" "$CHECK_TOOLS" "$EXTRAS" <<'EOF'
import re, sys
try:
    import tomllib
    project = tomllib.load(open("pyproject.toml", "rb"))["project"]
    deps = project["dependencies"]
    for extra in sys.argv[3].split():
        deps = deps + project["optional-dependencies"][extra]
except ImportError:  # Python < 3.11: the dependency strings of the [project] table
    text = open("pyproject.toml").read()
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M).group(1)
    deps = re.findall(r'^\s*"([^"]+)"', block, re.M)
    for extra in sys.argv[3].split():
        line = re.search(rf"^{extra}\s*=\s*\[(.*?)\]", text, re.M).group(1)
        deps = deps + re.findall(r'"([^"]+)"', line)
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
image = {norm(n) for n in sys.argv[1].split()}
out = [d.replace(" ", "") for d in deps
       if norm(re.match(r"[A-Za-z0-9_.-]+", d).group(0)) not in image]
print(" ".join(out + sys.argv[2].split()))
EOF
)"
echo "[gpu_wheels] CPython $PY_VERSION manylinux x86_64 wheels for: $NEEDS"

# Every manylinux tag up to glibc 2.28 (the jax 0.11 and torch 2.11 wheels need 2.27 / 2.28):
# pip takes the tags given literally, so the older ones are listed too.
PLATFORMS=()
for minor in $(seq 28 -1 17) 12 5; do PLATFORMS+=(--platform "manylinux_2_${minor}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64
            --platform manylinux1_x86_64 --platform any)

TMP="$(mktemp -d "${DEST%/}.tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
# shellcheck disable=SC2086
"$PIP_PY" -m pip download --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp --abi "$PY_TAG" "${PLATFORMS[@]}" --dest "$TMP" \
    --disable-pip-version-check -q $NEEDS 2> >(grep -v "is ignored: it is neither" >&2)

# Drop the image's own packages (pulled in as dependencies), then check what is left.
"$PIP_PY" - "$TMP" "$IMAGE_HAS" "$FORBIDDEN_RE" "$NEEDS" <<'EOF'
import os, re, sys
folder, image, forbidden, needs = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4].split()
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
image = {norm(n) for n in image}
kept = {}
for f in sorted(os.listdir(folder)):
    if not f.endswith(".whl"):
        sys.exit(f"[gpu_wheels] not a wheel: {f}")
    name, version = f.split("-")[:2]
    if norm(name) in image:
        os.remove(os.path.join(folder, f))
        print(f"[gpu_wheels] dropped (the image has it): {f}")
        continue
    if re.match(forbidden, norm(name)):
        sys.exit(f"[gpu_wheels] refusing to bundle {f}: the image's jax/torch/CUDA/numpy stay untouched")
    kept[norm(name)] = version
# requirements.txt: the top-level packages at the versions downloaded
with open(os.path.join(folder, "requirements.txt"), "w") as out:
    out.write("# written by benchmarks/gpu_wheels.sh; installed by benchmarks/gpu_checks.sh\n")
    for req in needs:
        name = norm(re.match(r"[A-Za-z0-9_.-]+", req).group(0))
        out.write(f"{name}=={kept[name]}\n")
print("[gpu_wheels] bundle:", ", ".join(f"{n} {v}" for n, v in sorted(kept.items())))
EOF

rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT

bundle_kib=$(du -sk "$DEST" | cut -f1)
# What a device run ships: the tracked and untracked-but-not-ignored files, plus the bundle.
tree_bytes=$(git ls-files -z -c -o --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
             | awk '{s += $1} END {print s + 0}')
total_mib=$(( (tree_bytes + bundle_kib * 1024) / 1048576 ))
echo "[gpu_wheels] $(du -sh "$DEST" | cut -f1)  $DEST ($(ls "$DEST"/*.whl | wc -l) wheels)"
echo "[gpu_wheels] shipped with the working tree ($((tree_bytes / 1048576)) MiB): ${total_mib} MiB of ${SHIP_LIMIT_MIB} MiB"
if [ "$total_mib" -ge "$SHIP_LIMIT_MIB" ]; then
  echo "[gpu_wheels] FAILED: the working tree plus $DEST exceed ${SHIP_LIMIT_MIB} MiB" >&2
  exit 1
fi
