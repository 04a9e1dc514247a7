"""What every benchmark prints about its own run, first and last: the command, the commit and
whether the tree had uncommitted changes, the device, the date and load average, and at the
end the wall time and load average (the same record the study and the sweep keep, from
`jackpot_jax.experiments.provenance`)."""

import atexit
import os
import sys
import time

from jackpot_jax.experiments import provenance


def begin(tool: str) -> dict:
    """Prints the header (JAX starts here: call it after setting XLA flags) and registers the
    footer for the end of the process; returns the record."""
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
