"""Parameter paths, prunable filters and trees that mirror the params."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

PyTree = Any
FilterFn = Callable[[str, Any], bool]


# The classifier stays dense by default (as in the official code).
DEFAULT_EXCLUDE = (r"(^|/)classifier(/|$)",)


def is_none(x) -> bool:
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
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)[0]
    return {path_str(kp): v for kp, v in flat if keep_none or v is not None}


def tree_from_paths(params: PyTree, flat: Mapping[str, Any]) -> PyTree:
    """A tree mirroring ``params`` with ``flat[path]`` where given and ``None`` elsewhere."""
    known = flatten_paths(params)
    unknown = sorted(set(flat) - set(known))
    if unknown:
        raise ValueError(f"paths not in the params tree: {unknown}; known paths: {sorted(known)}")
    return jax.tree_util.tree_map_with_path(lambda kp, _: flat.get(path_str(kp)), params)


def make_filter(
    include: Sequence[str] | None = None, exclude: Sequence[str] | None = DEFAULT_EXCLUDE
) -> FilterFn:
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
            f"{sorted(flat)}. Pass include/exclude patterns that match some of them."
        )
    return paths


def map_prunable(
    fn: Callable[[str, Any], Any], params: PyTree, filter_fn: FilterFn | None = None
) -> PyTree:
    """Tree mirroring ``params``: ``fn(path, leaf)`` on prunable leaves, ``None`` elsewhere."""
    chosen = set(prunable_paths(params, filter_fn))
    return jax.tree_util.tree_map_with_path(
        lambda kp, x: fn(path_str(kp), x) if path_str(kp) in chosen else None, params
    )


def check_mirror(params: PyTree, tree: PyTree, what: str = "scores") -> None:
    """ValueError naming the path where ``tree`` does not mirror ``params``."""
    p = flatten_paths(params)
    t = flatten_paths(tree, keep_none=True)
    if set(t) != set(p):
        missing, extra = sorted(set(p) - set(t)), sorted(set(t) - set(p))
        raise ValueError(
            f"{what} tree does not mirror the params tree: "
            f"missing paths {missing}, unexpected paths {extra}"
        )
    for path, leaf in t.items():
        if leaf is not None and np.shape(leaf) != np.shape(p[path]):
            raise ValueError(
                f"{what} leaf {path!r} has shape {np.shape(leaf)}, "
                f"but the param has shape {np.shape(p[path])}"
            )
    if not any(v is not None for v in t.values()):
        raise ValueError(f"{what} tree has no leaf that is not None")
