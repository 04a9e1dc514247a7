"""The lottery-jackpot method: exact top-k masks over frozen weights, and the measures around them.

Everything here is a pure function over pytrees and imports nothing from models, data or
training. Conventions:

* A *path* is the '/'-joined key path of a leaf in the params tree, e.g.
  ``'layer1_0/conv1/kernel'``. It names a layer everywhere: logs, summaries, exports.
* A *prunable filter* ``filter_fn(path, leaf) -> bool`` decides which leaves get scores.
* *Score*, *mask* and *keep-count* trees mirror the params tree with ``None`` on leaves that
  are not pruned. Masks are float 0/1 arrays of the weight's shape and dtype.
* A *budget* says which weights each layer keeps: a tree mirroring the scores whose leaves
  are keep counts (per-layer top-k, the official behaviour) or `NMPattern`s (``n`` of every
  ``m`` consecutive weights along the input axis, the layout of sparse tensor cores); a single
  ``int`` (one global top-k over all scores); or a single `NMPattern` for every layer.

Tie rule: wherever two scores are equal, the one with the lower flat (row-major) index wins,
so every mask has exactly the requested number of ones.
"""
