"""Test-only: with JACKPOT_JAX_KILL_AT='event:n' in the environment, a Python process that
has this folder on PYTHONPATH SIGKILLs itself at the n-th crash point (see `crash_hooks`)."""

import os

if os.environ.get("JACKPOT_JAX_KILL_AT"):
    import crash_hooks

    crash_hooks.install(crash_hooks.kill_at(os.environ["JACKPOT_JAX_KILL_AT"]))
