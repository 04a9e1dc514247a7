"""The errors a user can act on: a bad value, a missing or damaged file, a run that cannot go on.

Each message names the file, key or value and says what would be right. The CLI
(`jackpot_jax.main`) and the converter (`tools/convert_torch_weights.py`) print a
`JackpotError` as one ``error: ...`` line and exit 1; anything else is a bug and keeps its
traceback. Every class also derives from the matching builtin, so ``except ValueError`` and
``except FileNotFoundError`` keep working. `LibraryUnavailable` is the one exception here that
is not a user's error: an optional native library's loader raises it and the package falls back.
Every public exception class of the package is defined here; this module imports nothing.
"""


class JackpotError(Exception):
    """Base of the errors a user can fix; ``str(e)`` is the whole message."""


class ConfigError(JackpotError, ValueError):
    """A config value (or command-line option) that cannot work."""


class InputError(JackpotError, ValueError):
    """A file that is damaged, foreign to jackpot_jax, or does not fit the model."""


class ChecksumError(InputError):
    """A downloaded file whose MD5 is not the published one (corrupt or tampered download)."""


class UnsafeCheckpointError(InputError):
    """A checkpoint that needs full unpickling (arbitrary code), which jackpot_jax refuses."""


class MissingInputError(JackpotError, FileNotFoundError):
    """A file, directory or dataset that is not where it was looked for."""


class OutputExistsError(JackpotError, FileExistsError):
    """An output that exists and would be overwritten (the converter's ``--overwrite`` allows it)."""


class WorkdirError(JackpotError, RuntimeError):
    """A workdir that holds another run (another config, or files this run did not write)."""


class NonFiniteError(JackpotError, FloatingPointError):
    """A training loss or score that became NaN or infinite; the last good checkpoint stays."""


class LibraryUnavailable(Exception):
    """Why an optional native library is off, raised by its loader (`kernels.native`).

    Not a `JackpotError`: it never reaches the user as an error, because the library's
    `OptionalLibrary` turns it into a pure-JAX fallback (with one `FallbackWarning` when
    ``announce`` is true; false for the expected case: the optional dependency not installed).
    ``str(e)`` is the reason, naming the library and what would enable it."""

    def __init__(self, reason: str, *, announce: bool = True):
        super().__init__(reason)
        self.announce = announce
