"""sha256 of a jackpot's masks: ``python tools/mask_digest.py RUN_DIR_or_jackpot.npz [...]``.

Prints ``<digest>  <argument>`` for each argument: `jackpot_jax.utils.masks_digest` of the
``masks/<path>`` arrays of the jackpot.npz (a run directory means its jackpot.npz), the same
digest a multi-process run prints for its final masks. It covers the masks only (paths sorted,
shapes, each weight kept or not), not params or metadata, so two runs with identical masks
have equal digests wherever they ran. A missing or damaged file is one ``error:`` line (exit 1).
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, "jackpot_jax")):
    sys.path.insert(0, _ROOT)  # prefer the tree this script ships with

# pylint: disable=wrong-import-position
from jackpot_jax.errors import JackpotError
from jackpot_jax.pipeline.export import read_jackpot
from jackpot_jax.utils import masks_digest


def main(argv=None) -> int:
    """Prints the digest of each jackpot.npz (or run directory) named in ``argv``."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    for arg in args:
        try:
            print(f"{masks_digest(read_jackpot(arg)['masks'])}  {arg}")
        except JackpotError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
