"""The errors a user can act on: a bad value, a missing or damaged file, a run that cannot go on.

Each message names the file, key or value and says what would be right. The CLI
(`jackpot_jax.main`) and the converter (`tools/convert_torch_weights.py`) print a
`JackpotError` as one ``error: ...`` line and exit 1; anything else is a bug and keeps its
traceback. Every class also derives from the matching builtin, so ``except ValueError`` and
``except FileNotFoundError`` keep working. This module imports nothing.
"""


class JackpotError(Exception):
    """Base of the errors a user can fix; ``str(e)`` is the whole message."""


class ConfigError(JackpotError, ValueError):
    """A config value (or command-line option) that cannot work."""


class InputError(JackpotError, ValueError):
    """A file that is damaged, foreign to jackpot_jax, or does not fit the model."""


class MissingInputError(JackpotError, FileNotFoundError):
    """A file, directory or dataset that is not where it was looked for."""


class OutputExistsError(JackpotError, FileExistsError):
    """An output that exists and would be overwritten (the converter's ``--overwrite`` allows it)."""


class WorkdirError(JackpotError, RuntimeError):
    """A workdir that holds another run (another config, or files this run did not write)."""


class NonFiniteError(JackpotError, FloatingPointError):
    """A training loss or score that became NaN or infinite; the last good checkpoint stays."""
