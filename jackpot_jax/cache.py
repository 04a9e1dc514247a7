"""jackpot_jax's cache directory (standard library only: every layer may import it)."""

import os


def cache_root() -> str:
    """``$XDG_CACHE_HOME/jackpot_jax`` (else ``~/.cache/jackpot_jax``): downloaded datasets and
    compiled native handlers."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jackpot_jax")
