#!/usr/bin/env python
"""Convert PyTorch weights to a jackpot_jax checkpoint (or back with --to-torch).

  python tools/convert_torch_weights.py --arch resnet50 --input resnet50.pth --output ckpt/r50
  python tools/convert_torch_weights.py --to-torch --input ckpt/r50 --output r50.pth \
      [--jackpot jackpot.npz]
  python tools/convert_torch_weights.py --to-torch --input runs/search --output jackpot.pth
  python tools/convert_torch_weights.py --arch timm:vit_small_patch16_224 --image-size 64 \
      --input vit_s16.pth --output ckpt/vit_s16_64

An existing --output is refused unless --overwrite. Errors are one `error: ...` line (exit 1).
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, "jackpot_jax")):
    sys.path.insert(0, _ROOT)  # prefer the tree this script ships with

from jackpot_jax.interop.cli import main  # pylint: disable=wrong-import-position

if __name__ == "__main__":
    main()
