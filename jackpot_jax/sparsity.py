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

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
FilterFn = Callable[[str, Any], bool]

DISTRIBUTIONS = ("global_magnitude", "uniform", "erk", "global")
CRITERIA = ("magnitude", "random", "snip", "grasp")

# The classifier stays dense by default (as in the official code).
DEFAULT_EXCLUDE = (r"(^|/)classifier(/|$)",)


def _is_none(x) -> bool:
    return x is None


# ---------------------------------------------------------------------------------------------
# Paths and prunable leaves
# ---------------------------------------------------------------------------------------------


def _key_str(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_str(keypath) -> str:
    """'/'-joined string of a `jax.tree_util` key path."""
    return "/".join(_key_str(k) for k in keypath)


def flatten_paths(tree: PyTree, *, keep_none: bool = False) -> dict[str, Any]:
    """``{path: leaf}`` for a tree; ``None`` leaves are dropped unless ``keep_none``."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]
    return {path_str(kp): v for kp, v in flat if keep_none or v is not None}


def tree_from_paths(params: PyTree, flat: Mapping[str, Any]) -> PyTree:
    """A tree mirroring ``params`` with ``flat[path]`` where given and ``None`` elsewhere."""
    known = flatten_paths(params)
    unknown = sorted(set(flat) - set(known))
    if unknown:
        raise ValueError(f"paths not in the params tree: {unknown}; known paths: {sorted(known)}")
    return jax.tree_util.tree_map_with_path(lambda kp, _: flat.get(path_str(kp)), params)


def make_filter(include: Sequence[str] | None = None,
                exclude: Sequence[str] | None = DEFAULT_EXCLUDE) -> FilterFn:
    """Prunable-leaf filter over '/'-joined paths (patterns are `re.search` regexes).

    Default (``include=None``): every leaf named ``kernel`` with at least 2 dims, i.e. conv and
    dense kernels; biases and BatchNorm never. ``exclude`` (default: the ``classifier`` module)
    removes leaves; ``include`` replaces the default rule.
    """
    inc = [re.compile(p) for p in (include or ())]
    exc = [re.compile(p) for p in (exclude or ())]

    def filter_fn(path: str, leaf) -> bool:
        if inc:
            chosen = any(p.search(path) for p in inc)
        else:
            chosen = path.split("/")[-1] == "kernel" and np.ndim(leaf) >= 2
        return chosen and not any(p.search(path) for p in exc)

    return filter_fn


default_filter = make_filter()


def prunable_paths(params: PyTree, filter_fn: FilterFn | None = None) -> list[str]:
    """Paths of the prunable leaves, in tree order; a ValueError if the filter selects none."""
    filter_fn = filter_fn or default_filter
    flat = flatten_paths(params)
    paths = [p for p, leaf in flat.items() if filter_fn(p, leaf)]
    if not paths:
        raise ValueError(
            f"the prunable filter selects no leaf of the params tree; leaf paths are "
            f"{sorted(flat)}. Pass include/exclude patterns that match some of them.")
    return paths


def map_prunable(fn: Callable[[str, Any], Any], params: PyTree,
                 filter_fn: FilterFn | None = None) -> PyTree:
    """Tree mirroring ``params``: ``fn(path, leaf)`` on prunable leaves, ``None`` elsewhere."""
    chosen = set(prunable_paths(params, filter_fn))
    return jax.tree_util.tree_map_with_path(
        lambda kp, x: fn(path_str(kp), x) if path_str(kp) in chosen else None, params)


def check_mirror(params: PyTree, tree: PyTree, what: str = "scores") -> None:
    """ValueError naming the path where ``tree`` does not mirror ``params``."""
    p = flatten_paths(params)
    t = flatten_paths(tree, keep_none=True)
    if set(t) != set(p):
        missing, extra = sorted(set(p) - set(t)), sorted(set(t) - set(p))
        raise ValueError(f"{what} tree does not mirror the params tree: "
                         f"missing paths {missing}, unexpected paths {extra}")
    for path, leaf in t.items():
        if leaf is not None and np.shape(leaf) != np.shape(p[path]):
            raise ValueError(f"{what} leaf {path!r} has shape {np.shape(leaf)}, "
                             f"but the param has shape {np.shape(p[path])}")
    if not any(v is not None for v in t.values()):
        raise ValueError(f"{what} tree has no leaf that is not None")


# ---------------------------------------------------------------------------------------------
# Exact-count top-k masks
# ---------------------------------------------------------------------------------------------


def _ordered_keys(x: jax.Array) -> jax.Array:
    """uint32 keys whose unsigned order equals the float order of ``x`` (float32).

    NaN gets key 1, below every number (-inf is 0x007FFFFF) and above the padding key 0: a
    NaN score is never kept in place of a number (its raw bits would rank it above +inf).
    Integer operations only: XLA:CPU flushes subnormal floats to zero in float comparisons,
    which would tie every subnormal score with 0.
    """
    u = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    magnitude = u & jnp.uint32(0x7FFFFFFF)
    u = jnp.where(magnitude == 0, jnp.uint32(0), u)  # -0.0 and +0.0 are equal scores: one key
    sign = jnp.uint32(0x80000000)
    keys = jnp.where(u & sign, ~u, u | sign)
    return jnp.where(magnitude > jnp.uint32(0x7F800000), jnp.uint32(1), keys)


_BLOCK = 1024  # scores are counted in rows of this many; each row belongs to one array


def _blocked_topk(arrays: Sequence[jax.Array], keeps: Sequence[int], *,
                  unroll: bool = True, radix_bits: int = 1) -> list[jax.Array]:
    """Exact top-k 0/1 masks (bool) of several arrays at once, ``keeps[i]`` ones in
    ``arrays[i]``, ties broken by lower flat index within each array.

    The arrays' order-preserving uint32 keys are laid out in rows of ``_BLOCK`` (each array
    padded to whole rows with key 0, which no candidate threshold reaches), and one radix
    search finds every array's k-th largest key together: the threshold's bits are fixed from
    the top, ``radix_bits`` per pass (32 / radix_bits passes). Each pass counts, for all
    ``2**radix_bits - 1`` candidate values of the next digit at once, the keys at or above
    the candidate (one fused compare-and-count over all scores plus a tiny per-array sum of
    row counts) and keeps the largest digit whose count still reaches the keep count. With
    ``radix_bits=1`` this is a 32-step bitwise bisection; every radix finds the same (unique)
    threshold, so the masks are identical. The passes are unrolled, so on a GPU the whole
    mask is a few kernels and no `while` loop (one `fori_loop` per layer cost 14 ms for
    ResNet-32x2 on an H200, the unrolled bisection 1.1 ms); with ``unroll=False`` they run
    in a `fori_loop`, which XLA:CPU runs faster one layer at a time (see `MASK_LAYOUT`). A
    prefix sum runs only when tied scores straddle some array's cut.
    """
    if radix_bits not in (1, 2, 4, 8):
        raise ValueError(f"radix_bits={radix_bits}; expected 1, 2, 4 or 8 (a divisor of 32)")
    out: list[jax.Array | None] = [None] * len(arrays)
    live = []
    for i, (a, k) in enumerate(zip(arrays, keeps)):
        if k == 0:
            out[i] = jnp.zeros(a.shape, bool)
        elif k == a.size:
            out[i] = jnp.ones(a.shape, bool)
        else:
            live.append(i)
    if not live:
        return out
    rows = [-(-arrays[i].size // _BLOCK) for i in live]
    row_of = np.repeat(np.arange(len(live)), rows)          # static: which array a row is
    keys = [jnp.pad(_ordered_keys(jax.lax.stop_gradient(arrays[i]).ravel()),
                    (0, r * _BLOCK - arrays[i].size)) for i, r in zip(live, rows)]
    keys = jnp.concatenate(keys).reshape(-1, _BLOCK)
    keep = jnp.asarray([keeps[i] for i in live], jnp.int32)

    def per_array(row_counts):  # (rows, ...) int32 -> (arrays, ...) counts
        if len(live) == 1:
            return jnp.sum(row_counts, axis=0, dtype=jnp.int32)[None]
        return jax.ops.segment_sum(row_counts, row_of, num_segments=len(live),
                                   indices_are_sorted=True)

    digits = jnp.arange(1, 2 ** radix_bits, dtype=jnp.uint32)

    def step(i, t):  # largest t with count(keys >= t) >= keep, per array, radix_bits at a time
        shift = (32 - radix_bits * (i + 1)).astype(jnp.uint32)
        cands = t[:, None] | (digits[None, :] << shift)            # (arrays, digits)
        # Candidates on the major axis: every count is a reduction along a row of keys.
        hits = keys[None] >= cands[row_of].T[:, :, None]           # (digits, rows, _BLOCK)
        counts = per_array(jnp.sum(hits, axis=2, dtype=jnp.int32).T)   # (arrays, digits)
        # Counts fall as the digit grows: the number of digits that still reach the keep
        # count is the largest such digit.
        best = jnp.sum(counts >= keep[:, None], axis=1, dtype=jnp.int32).astype(jnp.uint32)
        return t | (best << shift)

    t = jnp.zeros(len(live), jnp.uint32)
    passes = 32 // radix_bits
    if unroll:
        for i in range(passes):
            t = step(jnp.int32(i), t)
    else:
        t = jax.lax.fori_loop(0, passes, step, t)
    t_rows = t[row_of][:, None]
    above, tied = keys > t_rows, keys == t_rows
    n_tied = per_array(jnp.sum(tied, axis=1, dtype=jnp.int32))
    need = keep - per_array(jnp.sum(above, axis=1, dtype=jnp.int32))

    def first_tied():  # only when some tied scores must be dropped: lower flat index wins
        rank = jnp.cumsum(tied.ravel(), dtype=jnp.int32).reshape(keys.shape)
        before = (jnp.cumsum(n_tied) - n_tied)[row_of][:, None]   # ties in earlier arrays
        return above | (tied & (rank - before <= need[row_of][:, None]))

    mask = jax.lax.cond(jnp.all(need == n_tied), lambda: above | tied, first_tied).ravel()
    start = np.concatenate([[0], np.cumsum(rows)]) * _BLOCK
    for j, i in enumerate(live):
        out[i] = mask[start[j]:start[j] + arrays[i].size].reshape(arrays[i].shape)
    return out


# How several layers' masks are computed: "together" (one unrolled blocked radix search over
# all layers: a few kernels, what GPUs and TPUs want), "per_layer" (one `fori_loop` bisection
# per layer: faster than "together" on XLA:CPU, 2.4x for ResNet-50 on 2 cores), "native" (a
# radix select in C++ per layer, `jackpot_jax.topk_select`: CPU only, 3-7x faster than
# "per_layer"), or "auto" (native on the CPU when it is available and there is one device,
# else per_layer on the CPU; together elsewhere). All give identical masks.
MASK_LAYOUT = "auto"
# Threshold bits fixed per pass in the "together" layout: 4 = 8 passes of 15 candidate counts
# each instead of 32 dependent one-candidate passes (the GPU mask is latency-bound: ~30 us a
# pass on an H200 whatever its size). Any of 1, 2, 4, 8 gives the same masks.
RADIX_BITS = 4
_LAYOUTS = ("auto", "per_layer", "together", "native")


def _layout_key() -> tuple[str, int]:
    return (MASK_LAYOUT, RADIX_BITS)


def _native_off_reason() -> str:
    """Why "auto" does not pick the native select on this backend now ("" when it does)."""
    from jackpot_jax import native, topk_select
    return native.placement_reason() or topk_select.unavailable_reason()


def resolved_layout(layout: str | None = None) -> str:
    """The layout masks traced now use: ``layout`` (default `MASK_LAYOUT`) with "auto"
    resolved for this backend."""
    layout = MASK_LAYOUT if layout is None else layout
    if layout not in _LAYOUTS:
        raise ValueError(f"MASK_LAYOUT={layout!r}; expected 'auto', 'per_layer', 'together' "
                         "or 'native'")
    if layout != "auto":
        return layout
    if jax.default_backend() != "cpu":
        return "together"
    return "per_layer" if _native_off_reason() else "native"


def describe_masks() -> str:
    """One line saying how the exact top-k masks of a step traced now are computed (the CLI
    prints it at the start of a run)."""
    layout = resolved_layout()
    where = jax.default_backend()
    if layout == "native":
        return f"masks: native radix select per layer ({where})"
    if layout == "together":
        return f"masks: radix search, {RADIX_BITS} bits a pass, all layers together ({where})"
    why = "" if MASK_LAYOUT != "auto" or where != "cpu" else f"; native: {_native_off_reason()}"
    return f"masks: 32-pass counting search per layer ({where}{why})"


def _topk_masks(arrays: Sequence[jax.Array], keeps: Sequence[int], layout) -> list:
    layout, radix_bits = layout
    layout = resolved_layout(layout)
    if layout == "native":
        from jackpot_jax import topk_select
        return [topk_select.topk_mask(jax.lax.stop_gradient(a), k)
                for a, k in zip(arrays, keeps)]
    if layout == "per_layer":
        return [_blocked_topk([a], [k], unroll=False)[0] for a, k in zip(arrays, keeps)]
    return _blocked_topk(arrays, keeps, unroll=True, radix_bits=radix_bits)


def topk_mask(scores: jax.Array, keep: int) -> jax.Array:
    """0/1 array of ``scores``' shape with exactly ``keep`` ones on the largest scores.

    Ties are broken by flat (row-major) index: the lower index is kept. NaN ranks below every
    number, -inf included (NaNs are kept only when ``keep`` exceeds the numbers). ``keep`` is a
    static Python int in ``[0, scores.size]``. Cost: 32 counting passes (a bitwise bisection
    for the k-th largest value), or 8 radix passes (``MASK_LAYOUT`` "together"), plus a prefix
    sum only when ties straddle the cut; on the CPU a C++ radix select with the same result
    (`jackpot_jax.topk_select`, four passes). O(n) memory, no sort. Works under `jit`; returns
    the dtype of ``scores`` if floating.
    """
    n = int(np.size(scores))
    keep = int(keep)
    if not 0 <= keep <= n:
        raise ValueError(f"keep={keep} is outside [0, {n}] for scores of shape {np.shape(scores)}")
    return _topk_mask(jnp.asarray(scores), keep, _layout_key())


def _float_dtype(x):
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32


@functools.partial(jax.jit, static_argnums=(1, 2))
def _topk_mask(scores: jax.Array, keep: int, layout: tuple) -> jax.Array:
    # Jitted also when called eagerly: one compilation per (shape, keep), not per primitive.
    return _topk_masks([scores], [keep], layout)[0].astype(_float_dtype(scores))


def _maybe_abs(scores, use_abs: bool):
    return jnp.abs(scores) if use_abs else scores


def ste_mask(scores: jax.Array, keep: int, *, use_abs: bool = True) -> jax.Array:
    """Straight-through top-k: the value is ``topk_mask``, the gradient is the identity.

    With ``use_abs`` (the official default) the mask ranks ``|scores|`` and the gradient
    w.r.t. ``scores`` carries ``sign(scores)``. The value equals ``topk_mask`` bit for bit:
    ``s - stop_gradient(s)`` is exactly zero for finite scores.
    """
    s = _maybe_abs(scores, use_abs)
    return _straight_through(topk_mask(s, keep), s)


def _straight_through(hard: jax.Array, s: jax.Array) -> jax.Array:
    """``hard`` in value, the identity w.r.t. ``s`` in gradient."""
    return jax.lax.stop_gradient(hard) + (s - jax.lax.stop_gradient(s))


def _global_masks(scores: PyTree, keep: int, mask_fn) -> PyTree:
    flat, treedef = jax.tree.flatten(scores)
    if not flat:
        raise ValueError("scores tree has no leaf that is not None")
    joined = jnp.concatenate([jnp.ravel(s) for s in flat])
    m = mask_fn(joined, keep)
    offsets = np.cumsum([0] + [int(np.size(s)) for s in flat])
    parts = [m[a:b].reshape(np.shape(s)) for a, b, s in zip(offsets[:-1], offsets[1:], flat)]
    return jax.tree.unflatten(treedef, parts)


# ---------------------------------------------------------------------------------------------
# N:M patterns
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NMPattern:
    """A budget leaf: exactly ``n`` kept weights in every group of ``m`` consecutive entries
    along a kernel's input-feature axis (axis -2: ``in`` of a Dense ``(in, out)`` kernel, ``I``
    of a conv ``HWIO`` kernel), the reduction axis of the layer's matmul. 2:4 is what NVIDIA's
    sparse tensor cores (A100, H100, H200) run at up to twice the dense rate.
    """
    n: int
    m: int

    def __post_init__(self):
        if not (isinstance(self.n, (int, np.integer)) and isinstance(self.m, (int, np.integer))
                and 0 < self.n <= self.m):
            raise ValueError(f"N:M pattern needs integers 0 < n <= m, got n={self.n!r}, "
                             f"m={self.m!r}")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def fits(self, shape: Sequence[int]) -> bool:
        """Whether a kernel of this shape can carry the pattern (axis -2 divisible by m)."""
        return len(shape) >= 2 and shape[-2] % self.m == 0

    def check(self, shape: Sequence[int], what: str = "scores") -> None:
        if not self.fits(shape):
            raise ValueError(
                f"{what} of shape {tuple(shape)} cannot carry the {self} pattern: it needs at "
                f"least 2 dims and an input axis (-2) divisible by {self.m}")


def parse_pattern(text: str) -> NMPattern | None:
    """``"2:4"`` -> ``NMPattern(2, 4)``; ``""`` -> ``None`` (unstructured top-k)."""
    text = (text or "").strip()
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"pattern={text!r}; expected 'n:m' with integers 0 < n <= m, e.g. "
                         "'2:4', or '' for unstructured masks")
    return NMPattern(int(parts[0]), int(parts[1]))


def nm_mask(scores: jax.Array, n: int, m: int) -> jax.Array:
    """0/1 array of ``scores``' shape with exactly ``n`` ones in every group of ``m``
    consecutive entries along axis -2, on the group's largest scores.

    Ties go to the lower index in the group (the lower flat index, as in `topk_mask`); NaN
    ranks below every number. ``scores`` needs at least 2 dims and ``scores.shape[-2] % m == 0``. Works under `jit`;
    returns the dtype of ``scores`` if floating.
    """
    NMPattern(n, m).check(np.shape(scores))
    return _nm_mask(jnp.asarray(scores), int(n), int(m))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _nm_mask(scores: jax.Array, n: int, m: int) -> jax.Array:
    return _nm_hard(scores, n, m).astype(_float_dtype(scores))


def _nm_hard(scores: jax.Array, n: int, m: int) -> jax.Array:
    """bool N:M mask. Each entry's rank in its group is the number of entries that beat it
    (a larger key, or an equal key at a lower index); the ``n`` of rank < n are kept. The
    order-preserving uint32 keys make the order total (NaN included), so counts are exact."""
    keys = jnp.moveaxis(_ordered_keys(jax.lax.stop_gradient(scores)), -2, -1)
    groups = keys.reshape(*keys.shape[:-1], keys.shape[-1] // m, m)
    a, b = groups[..., :, None], groups[..., None, :]         # entry i, competitor j
    lower = np.tril(np.ones((m, m), bool), -1)               # [i, j]: j < i
    rank = jnp.sum((b > a) | ((b == a) & lower), axis=-1, dtype=jnp.int32)
    return jnp.moveaxis((rank < n).reshape(keys.shape), -1, -2)


def nm_ste_mask(scores: jax.Array, n: int, m: int, *, use_abs: bool = True) -> jax.Array:
    """Straight-through N:M mask: the value is ``nm_mask`` (of ``|scores|`` with ``use_abs``),
    the gradient the identity (times ``sign(scores)`` with ``use_abs``), as `ste_mask`."""
    s = _maybe_abs(scores, use_abs)
    return _straight_through(nm_mask(s, n, m), s)


def nm_budget(params: PyTree, pattern: NMPattern,
              filter_fn: FilterFn | None = None) -> PyTree:
    """Budget tree: ``pattern`` on every prunable kernel whose input axis (-2) is divisible by
    ``pattern.m``, and the kernel's full size (kept dense) on the others, e.g. a first
    convolution with one input channel; `dense_kept` lists those."""
    return map_prunable(lambda _, w: pattern if pattern.fits(np.shape(w)) else int(np.size(w)),
                        params, filter_fn)


def dense_kept(budget: PyTree) -> list[str]:
    """Paths of an N:M budget tree's layers that carry no `NMPattern` (`nm_budget` gives them
    their full size: kept dense); [] for a budget with no pattern at all."""
    flat = flatten_paths(budget)
    if not any(isinstance(b, NMPattern) for b in flat.values()):
        return []
    return [p for p, b in flat.items() if not isinstance(b, NMPattern)]


def satisfies_pattern(mask, pattern: NMPattern) -> bool:
    """Whether a 0/1 mask has exactly ``n`` ones in every group of ``m`` along axis -2."""
    mask = np.asarray(mask)
    if not pattern.fits(mask.shape):
        return False
    per_group = np.moveaxis(mask != 0, -2, -1).reshape(-1, pattern.m).sum(-1)
    return bool(np.all(per_group == pattern.n))


def pattern_summary(masks: PyTree, pattern: NMPattern) -> dict[str, Any]:
    """What an N:M mask tree achieves: ``pattern``, the layers it covers and those kept dense,
    the sparsity over the patterned layers (``1 - n/m`` when every one satisfies it) and over
    all of them, and whether every patterned layer satisfies the pattern exactly."""
    flat = {p: np.asarray(m) for p, m in flatten_paths(masks).items()}
    patterned = [p for p, m in flat.items() if pattern.fits(m.shape)]
    kept = [p for p in flat if p not in patterned and np.all(flat[p] != 0)]
    other = [p for p in flat if p not in patterned and p not in kept]

    def zeros(paths):
        n = sum(flat[p].size for p in paths)
        return float(sum(flat[p].size - np.count_nonzero(flat[p]) for p in paths) / n) if n else None

    return {"pattern": str(pattern), "patterned_layers": patterned, "dense_kept": kept,
            "unpatterned_pruned": other,
            "pattern_satisfied": all(satisfies_pattern(flat[p], pattern) for p in patterned),
            "sparsity_patterned": zeros(patterned), "sparsity_all_masked": zeros(list(flat))}


def masks_from_scores(scores: PyTree, budget: PyTree | int | NMPattern, *,
                      use_abs: bool = True, straight_through: bool = False) -> PyTree:
    """Hard masks (or STE masks) for a score tree under a budget.

    ``budget`` is a tree mirroring ``scores`` whose leaves are keep counts (per-layer top-k)
    or `NMPattern`s (``n`` of every ``m`` along axis -2, see `nm_mask`); a single `NMPattern`
    (the same pattern on every layer); or a single int (one global top-k over all scores,
    concatenated in tree order; ties by that order).
    """
    if isinstance(budget, (int, np.integer)):
        n = sum(int(np.size(s)) for s in jax.tree.leaves(scores))
        if not 0 <= int(budget) <= n:
            raise ValueError(f"global keep count {budget} is outside [0, {n}]")
        key: int | tuple = int(budget)
    else:
        s_paths = flatten_paths(scores)
        if isinstance(budget, NMPattern):
            b_paths = {p: budget for p in s_paths}
        else:
            b_paths = flatten_paths(budget)
        if set(s_paths) != set(b_paths):
            raise ValueError(f"budget paths {sorted(b_paths)} differ from score paths "
                             f"{sorted(s_paths)}")
        for path, k in b_paths.items():
            shape = np.shape(s_paths[path])
            if isinstance(k, NMPattern):
                k.check(shape, f"scores of layer {path!r}")
                continue
            n = int(np.prod(shape))
            if not 0 <= int(k) <= n:
                raise ValueError(f"keep count {k} for layer {path!r} is outside [0, {n}]")
            b_paths[path] = int(k)
        key = tuple(sorted(b_paths.items()))
    return _masks_fn(key, bool(use_abs), bool(straight_through), _layout_key())(scores)


@functools.lru_cache(maxsize=64)
def _masks_fn(budget_key, use_abs: bool, straight_through: bool, layout: tuple):
    """One jitted function per budget: eager callers compile the whole tree once, not one
    small program per layer (53 for ResNet-50); per-layer top-k budgets run every such
    layer's top-k in one blocked bisection or one after another (`MASK_LAYOUT`); N:M layers
    rank within their groups."""
    if straight_through:
        mask_fn = lambda s, k: ste_mask(s, k, use_abs=use_abs)
    else:
        mask_fn = lambda s, k: topk_mask(_maybe_abs(s, use_abs), k)

    @jax.jit
    def fn(scores):
        if isinstance(budget_key, int):
            return _global_masks(scores, budget_key, mask_fn)
        budgets = dict(budget_key)
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(scores)
        ranked = [_maybe_abs(s, use_abs) for _, s in with_paths]
        leaf_budgets = [budgets[path_str(kp)] for kp, _ in with_paths]
        hard: list = [None] * len(ranked)
        topk = [i for i, b in enumerate(leaf_budgets) if not isinstance(b, NMPattern)]
        for i, h in zip(topk, _topk_masks([ranked[i] for i in topk],
                                          [leaf_budgets[i] for i in topk], layout)):
            hard[i] = h
        for i, b in enumerate(leaf_budgets):
            if isinstance(b, NMPattern):
                hard[i] = _nm_hard(ranked[i], b.n, b.m)
        hard = [h.astype(_float_dtype(r)) for h, r in zip(hard, ranked)]
        if straight_through:
            hard = [_straight_through(h, r) for h, r in zip(hard, ranked)]
        return jax.tree.unflatten(treedef, hard)

    return fn


@jax.jit
def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """``w * m`` on masked leaves, ``w`` elsewhere."""
    def apply(m, w):
        if m is None:
            return w
        chex.assert_equal_shape([m, w])
        return w * m.astype(w.dtype)

    return jax.tree.map(apply, masks, params, is_leaf=_is_none)


def masked_params(params: PyTree, scores: PyTree, budget: PyTree | int | NMPattern, *,
                  use_abs: bool = True) -> PyTree:
    """Params with straight-through masks applied: ``w * ste_mask(s)`` on prunable leaves.

    The gradient w.r.t. ``scores`` is ``dL/d(w*m) * w`` (times ``sign(s)`` with ``use_abs``),
    also for pruned weights. ``params`` are treated as constants.
    """
    params = jax.lax.stop_gradient(params)
    masks = masks_from_scores(scores, budget, use_abs=use_abs, straight_through=True)
    return apply_masks(params, masks)


# ---------------------------------------------------------------------------------------------
# Persistent masks updated by balanced swaps (the authors' 2023 code, DESIGN.md section 7)
# ---------------------------------------------------------------------------------------------

SWAP_SCHEDULES = ("official", "poly")


def check_swap_schedule(schedule: str, rate: float = 1.0, power: float = 4.0) -> None:
    """ValueError naming the bad setting of a swap-rate schedule (see `swap_rate`)."""
    if schedule not in SWAP_SCHEDULES:
        raise ValueError(f"swap schedule {schedule!r}; expected one of {SWAP_SCHEDULES}")
    if not 0.0 < float(rate) <= 1.0:
        raise ValueError(f"swap rate={rate!r} must be in (0, 1]")
    if not float(power) >= 0.0:
        raise ValueError(f"swap power={power!r} must be >= 0")


def swap_rate(epoch, epochs: int, schedule: str = "official", rate: float = 1.0,
              power: float = 4.0):
    """Fraction of the eligible pairs a swap update makes in ``epoch`` (0-based) of ``epochs``.

    * ``official``: ``ceil((1 - epoch / epochs) ** 4)``, the authors' ``adjust_rate``; it is 1
      in every epoch of the run (the base is in (0, 1]), so every eligible pair is swapped.
    * ``poly``: ``rate * (1 - epoch / epochs) ** power``: swaps thin out towards the end
      (``power=0``: a constant fraction ``rate``).

    ``epoch`` may be a traced integer (the step's epoch inside a jitted step); returns float32.
    """
    check_swap_schedule(schedule, rate, power)
    if int(epochs) < 1:
        raise ValueError(f"epochs={epochs!r} must be >= 1")
    left = 1.0 - jnp.asarray(epoch, jnp.float32) / jnp.float32(epochs)
    if schedule == "official":
        return jnp.ceil(left ** 4).astype(jnp.float32)
    return (jnp.float32(rate) * left ** jnp.float32(power)).astype(jnp.float32)


def _kth_largest_key(keys: jax.Array, k: jax.Array) -> jax.Array:
    """The k-th largest of a 1-D uint32 key array (``k`` traced, >= 1): the largest ``t``
    with ``count(keys >= t) >= k``, found one bit at a time (or by the native select where
    masks use it: `MASK_LAYOUT`)."""
    if resolved_layout() == "native":
        from jackpot_jax import topk_select
        return topk_select.kth_largest_key(keys, k)

    def step(i, t):
        cand = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(jnp.sum(keys >= cand, dtype=jnp.int32) >= k, cand, t)
    return jax.lax.fori_loop(0, 32, step, jnp.uint32(0))


def _top_keys(keys: jax.Array, k: jax.Array) -> jax.Array:
    """Bool mask of the ``k`` largest entries of a 1-D uint32 key array, ties to the lower
    index; ``k`` is traced, ``0 <= k <= count(keys > 0)`` (key 0 marks a non-candidate)."""
    t = _kth_largest_key(keys, jnp.maximum(k, 1))
    above, tied = keys > t, keys == t
    need = k - jnp.sum(above, dtype=jnp.int32)
    chosen = above | (tied & (jnp.cumsum(tied, dtype=jnp.int32) <= need))
    return chosen & (k > 0)


def _swap_layer(scores: jax.Array, mask: jax.Array, keep: int, rate: jax.Array,
                use_abs: bool) -> jax.Array:
    n = int(np.size(mask))
    if keep in (0, n):          # nothing pruned or nothing kept: no pair to swap
        return mask
    keys = _ordered_keys(_maybe_abs(scores, use_abs)).ravel()
    kept = mask.ravel() > 0
    # The cut is the (n - keep)-th smallest score, i.e. the (keep + 1)-th largest.
    cut = _kth_largest_key(keys, jnp.int32(keep + 1))
    rise, fall = ~kept & (keys > cut), kept & (keys <= cut)
    n_rise, n_fall = jnp.sum(rise, dtype=jnp.int32), jnp.sum(fall, dtype=jnp.int32)
    count = jnp.where(n_rise == n_fall, n_rise, 0)          # only balanced sets swap
    n_swap = jnp.where(count > 1, jnp.ceil(count.astype(jnp.float32) * rate).astype(jnp.int32),
                       count)
    n_swap = jnp.clip(n_swap, 0, count)

    def some():  # the n_swap highest risers and the n_swap lowest fallers
        up = _top_keys(jnp.where(rise, keys, jnp.uint32(0)), n_swap)
        # Lowest first = largest complemented key; reversed, so that of equal scores the
        # higher index falls first (the lower index wins, as everywhere in this module).
        down = _top_keys(jnp.where(fall, ~keys, jnp.uint32(0))[::-1], n_swap)[::-1]
        return up, down

    def every():
        return rise & (count > 0), fall & (count > 0)

    up, down = jax.lax.cond(n_swap == count, every, some)
    return ((kept | up) & ~down).reshape(mask.shape).astype(mask.dtype)


def swap_masks(scores: PyTree, masks: PyTree, budget: PyTree, rate, *,
               use_abs: bool = False) -> PyTree:
    """One update of persistent masks by the authors' 2023 swap rule, per layer.

    With ``n`` weights of which ``keep`` are kept, the cut is the ``(n - keep)``-th smallest
    score (``|score|`` with ``use_abs``; raw by default, as the 2023 code). Pruned weights
    whose score is above the cut may rise, kept weights whose score is at or below it may
    fall. Only when both sets have the same size ``c > 0`` are pairs swapped: the
    ``ceil(c * rate)`` highest risers (all ``c`` when ``c == 1``) enter the mask and as many
    lowest fallers leave it; of equal scores the lower flat index wins (rises first, falls
    last). Every layer keeps exactly its count. ``budget`` is a keep-count tree mirroring
    ``masks`` (per-layer counts), ``rate`` a scalar in [0, 1] (may be traced, see
    `swap_rate`). Returns masks of the input dtypes; works under `jit`.
    """
    if isinstance(budget, (int, np.integer)):
        raise ValueError("the swap rule is per layer: it needs a keep-count tree (any "
                         "distribution but 'global'), got one global count")
    s_paths, m_paths, b_paths = flatten_paths(scores), flatten_paths(masks), flatten_paths(budget)
    if not set(s_paths) == set(m_paths) == set(b_paths):
        raise ValueError(f"score, mask and budget trees differ: score paths {sorted(s_paths)}, "
                         f"mask paths {sorted(m_paths)}, budget paths {sorted(b_paths)}")
    for path, m in m_paths.items():
        chex.assert_equal_shape([s_paths[path], m])
        if not 0 <= int(b_paths[path]) <= int(np.size(m)):
            raise ValueError(f"keep count {b_paths[path]} for layer {path!r} is outside "
                             f"[0, {np.size(m)}]")
    key = tuple(sorted((p, int(k)) for p, k in b_paths.items()))
    return _swap_fn(key, bool(use_abs), _layout_key())(scores, masks,
                                                       jnp.asarray(rate, jnp.float32))


@functools.lru_cache(maxsize=64)
def _swap_fn(budget_key, use_abs: bool, layout: tuple):
    del layout   # a cache key only: `_kth_largest_key` reads MASK_LAYOUT when traced
    counts = dict(budget_key)

    @jax.jit
    def fn(scores, masks, rate):
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(masks)
        flat_scores = jax.tree.leaves(scores)
        new = [_swap_layer(s, m, counts[path_str(kp)], rate, use_abs)
               for (kp, m), s in zip(with_paths, flat_scores)]
        return jax.tree.unflatten(treedef, new)

    return fn


def masked_params_from_masks(params: PyTree, scores: PyTree, masks: PyTree, *,
                             use_abs: bool = False) -> PyTree:
    """``w * m`` with persistent masks ``m`` whose gradient flows to the scores straight
    through (identity; times ``sign(s)`` with ``use_abs``), as `masked_params` does for
    top-k masks. ``params`` are treated as constants."""
    params = jax.lax.stop_gradient(params)

    def ste(m, s):
        chex.assert_equal_shape([m, s])
        return _straight_through(m.astype(_float_dtype(s)), _maybe_abs(s, use_abs))

    return apply_masks(params, jax.tree.map(ste, masks, scores))


# ---------------------------------------------------------------------------------------------
# Layer budgets
# ---------------------------------------------------------------------------------------------


def _check_sparsity(sparsity: float) -> float:
    if not (isinstance(sparsity, (int, float, np.floating)) and 0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity={sparsity!r} must be a float in [0, 1)")
    return float(sparsity)


def _keep_of(n: int, sparsity: float) -> int:
    # The official rule prunes int(p * n); the 1e-9 stops float error turning 29 into 28.
    return n - int(math.floor(sparsity * n + 1e-9))


def _erk_densities(shapes: Mapping[str, tuple], sparsity: float, power: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel densities (RigL): density_l proportional to sum(dims)/prod(dims)."""
    sizes = {p: int(np.prod(s)) for p, s in shapes.items()}
    raw = {p: (sum(s) / np.prod(s)) ** power for p, s in shapes.items()}
    total_keep = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    eps = 0.0
    # Each pass makes at least one more layer dense, so this ends; once every layer is dense
    # (low sparsity) nothing is left to share out and there is no eps to compute.
    while len(dense) < len(shapes):
        free_keep = total_keep - sum(sizes[p] for p in dense)
        denom = sum(raw[p] * sizes[p] for p in shapes if p not in dense)
        eps = free_keep / denom
        over = [p for p in shapes if p not in dense and eps * raw[p] > 1.0]
        if not over:
            break
        dense.update(over)
    return {p: 1.0 if p in dense else eps * raw[p] for p in shapes}


def keep_counts(params: PyTree, sparsity: float, distribution: str = "global_magnitude", *,
                filter_fn: FilterFn | None = None, erk_power: float = 1.0) -> PyTree | int:
    """How many weights each prunable layer keeps for a target ``sparsity`` over prunable weights.

    * ``global_magnitude``: one global |w| threshold (exact global top-k, ties by tree order)
      fixes each layer's count; the search then keeps exactly that count per layer.
    * ``uniform``: every layer prunes ``floor(sparsity * n)`` of its ``n`` weights (official rule).
    * ``erk``: Erdos-Renyi-Kernel densities as in RigL, layers over density 1 made dense.
    * ``global``: returns one int, the total kept; masks are then one top-k over all scores.

    Per-layer results are a tree of Python ints mirroring ``params`` (``None`` elsewhere).
    The achieved global sparsity is within one weight per layer of the target.
    """
    sparsity = _check_sparsity(sparsity)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r}; expected one of {DISTRIBUTIONS}")
    chosen = prunable_paths(params, filter_fn)
    flat = flatten_paths(params)
    shapes = {p: tuple(np.shape(flat[p])) for p in chosen}
    sizes = {p: int(np.prod(s)) for p, s in shapes.items()}
    total = sum(sizes.values())
    if distribution == "global":
        return _keep_of(total, sparsity)
    if distribution == "uniform":
        counts = {p: _keep_of(n, sparsity) for p, n in sizes.items()}
    elif distribution == "erk":
        dens = _erk_densities(shapes, sparsity, erk_power)
        counts = {p: min(sizes[p], int(round(dens[p] * sizes[p]))) for p in chosen}
    else:  # global_magnitude
        mags = np.concatenate([np.abs(np.asarray(flat[p], np.float32)).ravel() for p in chosen])
        m = np.asarray(topk_mask(jnp.asarray(mags), _keep_of(total, sparsity)))
        offsets = np.cumsum([0] + [sizes[p] for p in chosen])
        counts = {p: int(m[a:b].sum()) for p, a, b in zip(chosen, offsets[:-1], offsets[1:])}
    return tree_from_paths(params, counts)


# ---------------------------------------------------------------------------------------------
# Criteria (importance: larger = keep) and score initialisation
# ---------------------------------------------------------------------------------------------


def magnitude_scores(params: PyTree, filter_fn: FilterFn | None = None) -> PyTree:
    """|w| on prunable leaves (magnitude pruning, Han et al. 2015)."""
    return map_prunable(lambda _, w: jnp.abs(w), params, filter_fn)


def random_scores(rng: jax.Array, params: PyTree, filter_fn: FilterFn | None = None) -> PyTree:
    """Uniform [0, 1) importance, independent per leaf: a random mask under any budget."""
    paths = prunable_paths(params, filter_fn)
    keys = dict(zip(paths, jax.random.split(rng, len(paths))))
    return map_prunable(lambda p, w: jax.random.uniform(keys[p], np.shape(w), jnp.float32),
                        params, filter_fn)


def _prunable_part(tree: PyTree, like: PyTree) -> PyTree:
    return jax.tree.map(lambda m, x: None if m is None else x, like, tree, is_leaf=_is_none)


def _sum_grads(loss_fn, params, batches):
    grad_fn = jax.jit(jax.grad(loss_fn))
    total = None
    for batch in batches:
        g = grad_fn(params, batch)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    if total is None:
        raise ValueError("batches is empty: SNIP/GraSP need at least one batch")
    return total


def snip_scores(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree,
                batches: Iterable[Any], filter_fn: FilterFn | None = None) -> PyTree:
    """SNIP connection sensitivity ``|w * dL/dw|`` (Lee et al. 2019).

    ``loss_fn(params, batch) -> scalar``; gradients are summed over ``batches`` first (as
    multi-batch SNIP implementations do), then multiplied by the weights.
    """
    like = map_prunable(lambda _, w: True, params, filter_fn)
    g = _sum_grads(loss_fn, params, batches)
    return jax.tree.map(lambda m, w, gw: None if m is None else jnp.abs(w * gw),
                        like, params, g, is_leaf=_is_none)


def grasp_scores(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree,
                 batches: Sequence[Any], filter_fn: FilterFn | None = None) -> PyTree:
    """GraSP importance (Wang et al. 2020): ``w * (H g)``, i.e. minus the GraSP score.

    GraSP scores weights by ``-w * (H g)`` and removes the highest scores; we return the
    negation so that, like every criterion here, larger means keep. ``g`` is the loss
    gradient summed over ``batches`` and ``H g`` the Hessian-gradient product, both over the
    prunable leaves. ``loss_fn`` should use logits divided by the temperature (200 in the
    GraSP code) and ``batches`` balanced samples per class; see `temperature_loss`.
    """
    like = map_prunable(lambda _, w: True, params, filter_fn)
    g = _sum_grads(loss_fn, params, batches)
    # Tangent: the gradient on prunable leaves, zero elsewhere (the Hessian block over them).
    tangent = jax.tree.map(lambda m, gw: jnp.zeros_like(gw) if m is None else gw, like, g,
                           is_leaf=_is_none)
    grad_fn = jax.grad(loss_fn)

    @jax.jit
    def hvp(p, batch):
        return jax.jvp(lambda q: grad_fn(q, batch), (p,), (tangent,))[1]

    hg = None
    for batch in batches:
        h = hvp(params, batch)
        hg = h if hg is None else jax.tree.map(jnp.add, hg, h)
    return jax.tree.map(lambda m, w, h: None if m is None else w * h, like, params, hg,
                        is_leaf=_is_none)


def temperature_loss(logits_fn: Callable[[PyTree, Any], jax.Array], temperature: float = 200.0):
    """``loss(params, (x, y))``: mean cross-entropy of ``logits_fn(params, x) / temperature``."""
    def loss(params, batch):
        x, y = batch
        logits = logits_fn(params, x) / temperature
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=1))
    return loss


def init_scores_from_mask(masks: PyTree, kept: float = 1.0, pruned: float = 0.95) -> PyTree:
    """Two-level score init (official code): ``kept`` where the mask keeps, ``pruned`` elsewhere.

    The gap ``kept - pruned`` sets how many SGD steps a pruned weight needs to pop up.
    """
    if not kept > pruned >= 0:
        raise ValueError(f"need kept > pruned >= 0 for a two-level init, got kept={kept}, "
                         f"pruned={pruned}")
    return _two_level(masks, float(kept), float(pruned))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _two_level(masks, kept, pruned):
    return jax.tree.map(lambda m: jnp.where(m > 0, kept, pruned).astype(jnp.float32), masks)


def kaiming_uniform_scores(rng: jax.Array, params: PyTree,
                           filter_fn: FilterFn | None = None) -> PyTree:
    """Random scores as in edge-popup: kaiming-uniform with a=sqrt(5), bound 1/sqrt(fan_in).

    Kernels are HWIO (conv) or (in, out) (dense): fan_in is the product of all but the last dim.
    """
    paths = prunable_paths(params, filter_fn)
    keys = dict(zip(paths, jax.random.split(rng, len(paths))))

    def init(path, w):
        fan_in = int(np.prod(np.shape(w)[:-1]))
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(keys[path], np.shape(w), jnp.float32, -bound, bound)

    return map_prunable(init, params, filter_fn)


# ---------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------


def _paired_leaves(a: PyTree, b: PyTree) -> list[tuple[str, Any, Any]]:
    fa, fb = flatten_paths(a), flatten_paths(b)
    if set(fa) != set(fb):
        raise ValueError(f"mask trees differ: only in the first {sorted(set(fa) - set(fb))}, "
                         f"only in the second {sorted(set(fb) - set(fa))}")
    for p in fa:
        if np.shape(fa[p]) != np.shape(fb[p]):
            raise ValueError(f"mask {p!r} has shapes {np.shape(fa[p])} and {np.shape(fb[p])}")
    return [(p, fa[p], fb[p]) for p in fa]


def overlap(mask_tree_a: PyTree, mask_tree_b: PyTree) -> jax.Array:
    """Eq. 7 of the paper: ``1 - ||m - m'||_1 / k`` over all prunable weights (k of them)."""
    pairs = _paired_leaves(mask_tree_a, mask_tree_b)
    k = sum(int(np.size(x)) for _, x, _ in pairs)
    return 1.0 - _l1_distance([x for _, x, _ in pairs], [y for _, _, y in pairs]) / k


@jax.jit
def _l1_distance(xs, ys):
    return sum(jnp.sum(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)))
               for x, y in zip(xs, ys))


def mask_flips(mask_tree_a: PyTree, mask_tree_b: PyTree) -> jax.Array:
    """How many prunable weights differ between two masks (pruned <-> kept)."""
    pairs = _paired_leaves(mask_tree_a, mask_tree_b)
    return _count_different([x for _, x, _ in pairs], [y for _, _, y in pairs])


@jax.jit
def _count_different(xs, ys):
    return sum(jnp.sum(jnp.asarray(x) != jnp.asarray(y), dtype=jnp.int32) for x, y in zip(xs, ys))


def sparsity_summary(masks: PyTree) -> dict[str, float]:
    """Fraction of zeros per prunable layer (by path) and ``'_total_sparsity'`` over all of them."""
    flat = flatten_paths(masks)
    out: dict[str, float] = {}
    zeros = total = 0
    for path, m in flat.items():
        m = np.asarray(m)
        z = int(m.size - np.count_nonzero(m))
        out[path] = z / m.size
        zeros += z
        total += m.size
    if not total:
        raise ValueError("mask tree has no leaf that is not None")
    out["_total_sparsity"] = zeros / total
    return out


def criterion_mask(importance: PyTree, budget: PyTree | int | NMPattern) -> PyTree:
    """Hard mask keeping the most important weights under ``budget`` (any budget of
    `masks_from_scores`; no abs: importance is already oriented so that larger = keep)."""
    return masks_from_scores(importance, budget, use_abs=False)


__all__ = [
    "CRITERIA", "DEFAULT_EXCLUDE", "DISTRIBUTIONS", "SWAP_SCHEDULES", "apply_masks",
    "check_mirror", "check_swap_schedule", "criterion_mask", "default_filter", "dense_kept",
    "flatten_paths", "grasp_scores", "init_scores_from_mask", "kaiming_uniform_scores",
    "keep_counts", "magnitude_scores", "make_filter", "map_prunable", "mask_flips",
    "masked_params", "masked_params_from_masks", "masks_from_scores", "nm_budget", "nm_mask",
    "nm_ste_mask", "NMPattern", "overlap", "parse_pattern", "path_str", "pattern_summary",
    "prunable_paths", "random_scores", "satisfies_pattern", "snip_scores", "sparsity_summary",
    "ste_mask", "swap_masks", "swap_rate", "temperature_loss", "topk_mask", "tree_from_paths",
]
