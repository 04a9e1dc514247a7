"""Command line: `python -m jackpot_jax.main --config configs/<name>.py --workdir DIR`.

Overrides go after the config, e.g. `--config.sparsity=0.95 --config.mode=pretrain`.
Rerunning the same command resumes from the last checkpoint in DIR. An error the user can fix
(`jackpot_jax.errors.JackpotError`: a bad value, a missing or damaged file) is printed as one
line and exits with status 1.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jackpot_jax import xla_flags
from jackpot_jax.errors import JackpotError
from jackpot_jax.pipeline import train

config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    xla_line = xla_flags.apply_recommended()  # before JAX starts; logged once it has
    try:
        train.run(flags.FLAGS.config, flags.FLAGS.workdir, notes=(xla_line,))
    except JackpotError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
