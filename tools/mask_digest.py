"""sha256 of a jackpot's masks: ``python tools/mask_digest.py runs/x/jackpot.npz [...]``.

The digest covers every ``masks/<path>`` array of the file (names and bytes, in path order),
not the metadata, so two runs with identical masks have equal digests wherever they ran.
"""

import hashlib
import sys

import numpy as np


def masks_digest(path: str) -> str:
    with np.load(path) as z:
        h = hashlib.sha256()
        for key in sorted(k for k in z.files if k.startswith("masks/")):
            h.update(key.encode())
            h.update(np.ascontiguousarray(z[key]).tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{masks_digest(arg)}  {arg}")
