"""Where a study or sweep invocation ran, written by the tool itself: into the log's header
(`start` prints it) and into results.json and DIR/invocations.jsonl (`finish`).

Recorded: the command, the commit and whether the tree had uncommitted changes, the device,
the date, the load average at the start and at the end, and the wall time.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git_state(cwd: str = _REPO) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding this code; (None, None) outside a git tree.
    `dirty`: tracked files differ from the commit (untracked files do not count)."""

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return None, None
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head.stdout.strip() or None, bool(status.stdout.strip())


def command(tool: str, argv: list[str] | None = None) -> str:
    """The command line: `python -m jackpot_jax.<tool> ARGS` from the launcher; otherwise (a
    test, a notebook) what Python was started with."""
    argv = sys.argv if argv is None else argv
    if argv and argv[0].endswith(os.path.join("jackpot_jax", f"{tool}.py")):
        return f"python -m jackpot_jax.{tool} " + " ".join(argv[1:])
    return "called from Python: " + " ".join(argv or ["?"])


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, rounded; None where the system has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _device() -> dict:
    import jax

    return {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
    }


def start(tool: str, workers: int = 1, command_line: str | None = None) -> dict:
    """The invocation's record so far, printed as the log's header (``command_line``: what
    to record as the command, default `command(tool)`). Reads the commit now: the
    code that runs, not what the tree holds when it ends. With worker processes the device is
    read at the end: starting JAX's backend here would take the GPU memory the workers share."""
    import jax

    commit, dirty = git_state()
    run = {
        "tool": tool,
        "command": command_line or command(tool),
        "commit": commit,
        "dirty": dirty,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        **(_device() if workers <= 1 else {}),
        "workers": workers,
        "load_average_start": load_average(),
        "_t0": time.time(),
    }
    for line in header_lines(run):
        print(f"[{tool}] {line}", flush=True)
    return run


def header_lines(run: dict) -> list[str]:
    dirty = {True: " (uncommitted changes)", False: " (clean tree)"}.get(run.get("dirty"), "")
    device = (
        f"{run['backend']}: {run['device']} x{run.get('device_count', 1)}"
        if "device" in run
        else "read after the worker processes ran"
    )
    return [
        f"command: {run['command']}",
        f"commit: {run['commit']}{dirty}",
        f"device: {device}, {run['cpu_count']} CPU cores, {run['machine']}, JAX {run['jax']}, "
        f"{run.get('workers', 1)} worker process(es)",
        f"date: {run['started']}; load average (1/5/15 min): {run.get('load_average_start')}",
    ]


def finish(run: dict, workdir: str, pieces_run: int) -> list[dict]:
    """Completes `run` (wall time, pieces run, load average at the end), prints it, appends it
    to DIR/invocations.jsonl and returns every invocation recorded there so far."""
    if "device" not in run:
        run.update(_device())
        print(f"[{run['tool']}] device: {run['backend']}: {run['device']}", flush=True)
    run["wall_seconds_this_invocation"] = time.time() - run.pop("_t0")
    run["pieces_run_this_invocation"] = pieces_run
    run["load_average_end"] = load_average()
    print(
        f"[{run['tool']}] wall time {run['wall_seconds_this_invocation']:.0f} s, "
        f"{pieces_run} pieces run; load average at the end: {run['load_average_end']}",
        flush=True,
    )
    path = os.path.join(workdir, "invocations.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps(run, sort_keys=True) + "\n")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def report_lines(history: list[dict]) -> list[str]:
    """The report's Provenance section: every invocation that ran a piece or has a note, and
    the last one (which wrote the report)."""
    shown = [r for r in history[:-1] if r["pieces_run_this_invocation"] or r.get("note")]
    shown += history[-1:]
    lines = ["## Provenance", ""]
    for i, r in enumerate(shown, 1):
        dirty = {True: " (uncommitted changes)", False: ""}.get(r.get("dirty"), "")
        load = ""
        if r.get("load_average_start") is not None:
            load = (
                f"; load average {r['load_average_start'][0]} at the start, "
                f"{(r.get('load_average_end') or ['?'])[0]} at the end"
            )
        lines += [
            f"Invocation {i}:" if len(shown) > 1 else "This invocation:",
            "",
            f"- command: `{r['command']}`",
            f"- commit: `{r['commit']}`{dirty}"
            + (f", started {r['started']}" if r.get("started") else ""),
            f"- machine: {r['cpu_count']} CPU cores, {r['machine']}, JAX {r['jax']} "
            f"({r['backend']}: {r.get('device')}), {r.get('workers', 1)} worker "
            f"process(es){load}",
            f"- wall time: {r['wall_seconds_this_invocation']:.0f} s "
            f"({r['pieces_run_this_invocation']} pieces run, the rest read back)",
        ]
        lines += ([f"- note: {r['note']}"] if r.get("note") else []) + [""]
    return lines
