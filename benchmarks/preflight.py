"""Preflight of the GPU checks: is this environment able to run them? Seconds, not the slot.

Run from the repository root (benchmarks/gpu_checks.sh runs it first and stops on failure)::

    python benchmarks/preflight.py            # needs a GPU that JAX sees
    python benchmarks/preflight.py --cpu-ok   # the CPU dry run (GPU_CHECKS_TINY=1)

It prints Python's, JAX's (and its plugins') and the other packages' versions and the devices
JAX sees, then imports every module of `jackpot_jax` (walked with pkgutil, so the list never
goes stale), every module of benchmarks/ and the tools the checks run (pytest). The last line
is the verdict: ``[preflight] OK ...`` (exit status 0) or ``[preflight] STOP: ...`` (exit
status 1), naming the packages that are missing (or the modules that failed to import and
why) or saying that JAX sees no GPU.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import os
import pkgutil
import platform
import sys
import time
import traceback

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BENCH = os.path.join(ROOT, "benchmarks")
# The versions worth a line in the log (distribution names), in this order.
VERSIONS = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "chex",
    "numpy",
    "torch",
    "torchvision",
    "timm",
    "pillow",
    "ml-collections",
    "grain",
    "simplejpeg",
    "array-record",
    "etils",
    "absl-py",
    "tqdm",
    "psutil",
    "pytest",
)
# Import names whose distribution is named otherwise (for the "missing package" line).
DIST_OF = {
    "ml_collections": "ml-collections",
    "PIL": "pillow",
    "absl": "absl-py",
    "array_record": "array-record",
    "yaml": "pyyaml",
    "google": "protobuf",
    "orbax": "orbax-checkpoint",
    "tensorflow_datasets": "tensorflow-datasets",
}
# What the checks run besides jackpot_jax and the benchmarks.
TOOLS = ("pytest",)
# The benchmarks' shared modules (a failure to import one of them is not a missing package).
OWN_MODULES = ("common", "reference", "step_report")


def say(msg: str) -> None:
    print(f"[preflight] {msg}", flush=True)


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def print_versions() -> None:
    say(f"python {platform.python_version()} ({sys.executable})")
    found = [(d, version(d)) for d in VERSIONS]
    # JAX's plugins (jax-cuda13-plugin, jax-cuda13-pjrt, ...) under whatever name they have.
    plugins = sorted(
        {
            (dist.metadata["Name"], dist.version)
            for dist in metadata.distributions()
            if (dist.metadata["Name"] or "")
            .lower()
            .startswith(("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm"))
        }
    )
    say("versions: " + ", ".join(f"{d} {v or '-'}" for d, v in found + plugins))


def check_devices(cpu_ok: bool) -> str | None:
    """Prints JAX's backend and devices (and torch's view); the failure line, or None."""
    try:
        import jax  # pylint: disable=import-outside-toplevel

        devices = jax.devices()
        backend = jax.default_backend()
    except Exception as e:  # pylint: disable=broad-except
        return f"JAX could not start a backend: {type(e).__name__}: {e}"
    say(f"jax {jax.__version__} backend {backend}: {devices}")
    try:
        import torch  # pylint: disable=import-outside-toplevel

        cuda = torch.cuda.is_available()
        say(
            f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees CUDA: {cuda}"
            + (f" ({torch.cuda.get_device_name(0)})" if cuda else "")
        )
        if not cuda and not cpu_ok:
            say(
                "warning: torch sees no CUDA: its columns and bench_nm's 2:4 timings will be missing"
            )
    except ImportError as e:
        say(f"warning: torch does not import ({e}): the PyTorch columns will be empty")
    if backend != "gpu" and not cpu_ok:
        return (
            f"JAX sees no GPU (backend {backend}, devices {devices}); check the jax CUDA "
            "plugin above, or run with GPU_CHECKS_TINY=1 for the CPU dry run"
        )
    return None


def on_disk(paths, prefix: str):
    """The module names of the .py files under a package's folders."""
    for path in paths:
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d.isidentifier())  # no __pycache__, csrc ok
            rel = os.path.relpath(folder, path)
            parts = [prefix] + ([] if rel == "." else rel.split(os.sep))
            for f in sorted(files):
                if f.endswith(".py") and f[:-3].isidentifier():
                    yield ".".join(parts + ([] if f == "__init__.py" else [f[:-3]]))


def import_all() -> dict[str, BaseException]:
    """Imports every jackpot_jax module, every benchmark module and TOOLS; the failures."""
    failures: dict[str, BaseException] = {}

    def attempt(name: str) -> None:
        env = dict(os.environ)  # bench_nm sets JAX_PLATFORMS=cpu on import
        try:
            importlib.import_module(name)
        except BaseException as e:  # pylint: disable=broad-except  (SystemExit from a module too)
            failures[name] = e
        finally:
            os.environ.clear()
            os.environ.update(env)

    for tool in TOOLS:
        attempt(tool)
    sys.path.insert(0, ROOT)
    attempt("jackpot_jax")
    if "jackpot_jax" not in failures:
        import jackpot_jax  # pylint: disable=import-outside-toplevel

        names = ["jackpot_jax"]
        # walk_packages imports the subpackages to walk them; a failing one is reported.
        for info in pkgutil.walk_packages(
            jackpot_jax.__path__,
            "jackpot_jax.",
            onerror=lambda n: failures.setdefault(n, sys.exc_info()[1] or ImportError(n)),
        ):
            names.append(info.name)
            attempt(info.name)
        # pkgutil does not enter a folder without __init__.py (a namespace package): the
        # files on disk that it missed are imported too.
        for name in sorted(set(on_disk(jackpot_jax.__path__, "jackpot_jax")) - set(names)):
            names.append(name)
            attempt(name)
        say(
            f"imported {len(names) - sum(n.startswith('jackpot_jax') for n in failures)} of "
            f"{len(names)} jackpot_jax modules"
        )
    sys.path.insert(0, BENCH)
    benches = sorted(
        f[:-3] for f in os.listdir(BENCH) if f.endswith(".py") and f != os.path.basename(__file__)
    )
    for name in benches:
        attempt(name)
    say(
        f"imported {sum(n not in failures for n in benches)} of {len(benches)} benchmark "
        f"modules ({', '.join(benches)})"
    )
    return failures


def describe(failures: dict[str, BaseException]) -> str:
    missing: dict[str, list[str]] = {}
    other = []
    for name, e in failures.items():
        if (
            isinstance(e, ModuleNotFoundError)
            and e.name
            and not e.name.startswith(("jackpot_jax", "bench_", *OWN_MODULES))
        ):
            top = e.name.split(".")[0]
            missing.setdefault(DIST_OF.get(top, top), []).append(
                "the checks" if name in TOOLS else name
            )
        else:
            other.append(f"{name} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    parts = []
    if missing:
        parts.append(
            "missing packages: "
            + "; ".join(
                f"{dist} (needed by {', '.join(mods[:3])}{', ...' if len(mods) > 3 else ''})"
                for dist, mods in sorted(missing.items())
            )
            + " -- run `bash benchmarks/gpu_wheels.sh` and ship gpu_wheels/ with the tree"
        )
    if other:
        parts.append("import failed: " + "; ".join(other))
    return ". ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-ok", action="store_true", help="the CPU dry run: no GPU is required")
    args = parser.parse_args()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # a few devices' look only
    t0 = time.time()
    print_versions()
    # The devices before any import: a module may set JAX_PLATFORMS (bench_nm does).
    device_failure = check_devices(args.cpu_ok)
    failures = import_all()
    for name, e in failures.items():  # the details above the verdict
        print(f"--- {name}:", file=sys.stderr)
        traceback.print_exception(type(e), e, e.__traceback__, limit=-3, file=sys.stderr)
    sys.stderr.flush()
    if device_failure or failures:
        reasons = [r for r in (device_failure, failures and describe(failures)) if r]
        say(f"STOP after {time.time() - t0:.1f} s: {'. '.join(reasons)}")
        return 1
    say(f"OK in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
