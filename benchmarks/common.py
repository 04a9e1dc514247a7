"""What every benchmark shares: the repository on ``sys.path``, the provenance header and footer,
the lines describing the device and the thread environment, and one set of timing helpers.

The benchmarks run as ``python benchmarks/<name>.py`` from the repository root: this folder is
then on ``sys.path`` and ``import common`` finds this module, which puts the repository root
there too (the package need not be installed). Nothing here imports torch at module level.
"""

from __future__ import annotations

import atexit
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from jackpot_jax.experiments import provenance  # noqa: E402  (needs ROOT on sys.path)

# The OpenMP settings that change how both sides' thread pools wait (printed, never set here).
THREAD_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


# ---------------------------------------------------------------------------------------------
# Provenance and environment
# ---------------------------------------------------------------------------------------------


def start(tool: str, *, xla_flags: bool = True) -> dict:
    """Starts a benchmark's run: adds the recommended XLA flags (unless ``xla_flags`` is
    False; before JAX starts its backend, so call this first) and prints the line saying so,
    prints the provenance header (command, commit and whether the tree had uncommitted
    changes, device, date, load average) and registers the footer (wall time, load average at
    the end) for the end of the process. Returns the provenance record."""
    if xla_flags:
        from jackpot_jax import xla_flags as flags

        print(flags.apply_recommended(), flush=True)
    argv = [os.path.relpath(sys.argv[0]), *sys.argv[1:]]
    run = provenance.start(tool, command_line="python " + " ".join(argv))
    atexit.register(_end, run)
    return run


def _end(run: dict) -> None:
    print(
        f"[{run['tool']}] wall time {time.time() - run['_t0']:.0f} s; load average at the end "
        f"(1/5/15 min): {provenance.load_average()}",
        flush=True,
    )


def device_name() -> str:
    """JAX's first device in words: ``cpu (N cores, arch)`` or ``gpu (device kind)``."""
    import jax

    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores, {platform.machine()})"
    return f"{d.platform} ({d.device_kind})"


def thread_env() -> str:
    """The OpenMP variables of `THREAD_VARS` as this process sees them (``unset`` if absent)."""
    return ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in THREAD_VARS)


def inductor_cache() -> str:
    """Where torch.compile keeps its compiled code, and whether it held any already (then the
    compile variants' first steps are those of a warm cache)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        path = cache_dir()
    except Exception:  # pylint: disable=broad-except  # a private module of torch
        return "inductor cache: unknown"
    size = 0
    for folder, _, files in os.walk(path):
        for f in files:
            try:
                size += os.path.getsize(os.path.join(folder, f))
            except OSError:
                pass
    state = f"warm, {size / 2**20:.0f} MiB" if size else "cold, empty"
    return f"inductor cache {path}: {state}"


# ---------------------------------------------------------------------------------------------
# Host memory (Linux)
# ---------------------------------------------------------------------------------------------


def rss_bytes(field: str = "VmRSS") -> int | None:
    """This process's ``VmRSS`` (resident now) or ``VmHWM`` (peak resident) in bytes, from
    /proc/self/status; None where there is no such file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Resets ``VmHWM`` to the current RSS (writes 5 to /proc/self/clear_refs, Linux >= 4.0);
    False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Garbage-collects and hands glibc's free heap pages back to the kernel (``malloc_trim``),
    so that the RSS counts live memory only (no-op without glibc)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def first_line(e: BaseException) -> str:
    """``Type: first line of the message``, at most 300 characters (a failure's table cell)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def cuda_event_clock(torch):
    """A clock for `median_ms`: the milliseconds of one ``fn()`` between two CUDA events on the
    current stream (the GPU's time, not the host's)."""

    def clock(fn) -> float:
        start_ev = torch.cuda.Event(enable_timing=True)
        end_ev = torch.cuda.Event(enable_timing=True)
        start_ev.record()
        fn()
        end_ev.record()
        end_ev.synchronize()
        return start_ev.elapsed_time(end_ev)

    return clock


def median_ms(fn, repeats: int, warmup: int = 2, *, block=None, clock=None) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones.
    ``block`` (e.g. `jax.block_until_ready`) gets each call's result inside the timed span;
    ``clock(fn) -> ms`` replaces the host's wall clock (e.g. `cuda_event_clock`)."""

    def call():
        out = fn()
        return block(out) if block is not None else out

    def wall(f) -> float:
        t0 = time.perf_counter()
        f()
        return (time.perf_counter() - t0) * 1e3

    clock = clock or wall
    for _ in range(warmup):
        call()
    return statistics.median(clock(call) for _ in range(repeats))


def time_sides(builders: dict, steps: int, warmup: int, rounds: int, log=print) -> dict:
    """{side: result} for ``{side: () -> run}``, ``run() -> (ms, loss)``: each side built and
    warmed up (its first step, jit or compile included, timed apart as ``first_s``; its loss is
    ``loss0``), then ``rounds`` rounds of ``steps`` timed steps per side, the sides' order
    rotating every round so that all see the same machine load. A result holds the median
    ``ms``, quartiles ``q1``/``q3``, ``min`` and count ``n`` of the timed steps (and a run's
    ``check_loss0`` attribute, if it has one); a side that raises is kept as
    ``{"error": first line}``. ``log`` prints the per-side lines (None: silent)."""
    say = log or (lambda *a, **k: None)
    runs, out = {}, {}
    for side, build in builders.items():
        try:
            t0 = time.perf_counter()
            run = build()
            build_s = time.perf_counter() - t0
            first_ms, loss0 = run()
            for _ in range(max(warmup - 1, 0)):
                run()
        except Exception as e:  # pylint: disable=broad-except  # a failed variant is a result
            out[side] = {"error": first_line(e)}
            say(f"    {side}: FAILED: {out[side]['error']}", flush=True)
            continue
        runs[side] = run
        out[side] = {"loss0": loss0, "first_s": first_ms / 1e3 + build_s, "times": []}
        check = getattr(run, "check_loss0", None)
        if check is not None:
            out[side]["check_loss0"] = check
        if log is not None:
            log(
                f"    {side}: step 0 loss {loss0:.6f}"
                + ("" if check is None else f" ({check:.6f} in float32)")
                + f", first step {first_ms / 1e3:.1f} s (+{build_s:.1f} s to build)",
                flush=True,
            )
    order = list(runs)
    for r in range(rounds):
        for side in order[r % len(order) :] + order[: r % len(order)] if order else []:
            if "error" in out[side]:
                continue
            try:
                for _ in range(steps):
                    ms, out[side]["loss"] = runs[side]()
                    out[side]["times"].append(ms)
            except Exception as e:  # pylint: disable=broad-except
                out[side] = {"error": first_line(e)}
                say(f"    {side}: FAILED while timed: {out[side]['error']}", flush=True)
    for res in out.values():
        if "error" not in res:
            t = np.asarray(res.pop("times"))
            res.update(
                ms=float(np.median(t)),
                q1=float(np.percentile(t, 25)),
                q3=float(np.percentile(t, 75)),
                min=float(t.min()),
                n=int(t.size),
            )
    return out


def fmt_ms(r: dict | None) -> str:
    """``median [q1-q3]`` of a `time_sides` result (``failed`` for an error, empty for None)."""
    if r is None:
        return ""
    if "error" in r:
        return "failed"
    return f"{r['ms']:.1f} [{r['q1']:.1f}-{r['q3']:.1f}]"
