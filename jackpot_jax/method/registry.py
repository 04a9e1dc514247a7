"""Registries: a name mapped to a function, one signature per registry.

The method's choices that a config, `find_jackpot`, the studies and the ``--help`` texts name
by string (criteria, budget distributions, warm-ups, mask-update rules) are each one
`Registry`. Adding a criterion is one decorated function in `method/scores.py` (and its test):
everything that lists or checks criteria reads the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from jackpot_jax.errors import ConfigError


class Registry(Mapping[str, Callable[..., Any]]):
    """An ordered, read-only mapping ``name -> function`` filled by `register`.

    ``kind`` names what the entries are ("criterion", "distribution", ...) in errors.
    ``signature`` documents the one signature every entry has. Each entry may carry tags
    (e.g. ``needs_data=True``), read with `tags`. Looking up an unknown name raises a
    `ConfigError` that names it and every registered name.
    """

    def __init__(self, kind: str, signature: str):
        self.kind = kind
        self.signature = signature
        self._entries: dict[str, Callable[..., Any]] = {}
        self._tags: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **tags: Any) -> Callable[[Callable], Callable]:
        """Decorator: registers the function under ``name`` (once) with ``tags``."""

        def add(fn: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            self._tags[name] = dict(tags)
            return fn

        return add

    def __getitem__(self, name: str) -> Callable[..., Any]:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"{self.kind}={name!r} is not known; expected one of {list(self._entries)}"
            ) from None

    def check(self, name: str) -> str:
        """``name`` if registered, else the `ConfigError` of `__getitem__`."""
        self[name]
        return name

    def tags(self, name: str) -> dict[str, Any]:
        self[name]
        return dict(self._tags[name])

    def names(self, **tags: Any) -> tuple[str, ...]:
        """Registered names in registration order, those whose tags match ``tags`` if given."""
        return tuple(
            n for n in self._entries if all(self._tags[n].get(k) == v for k, v in tags.items())
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
