"""A user's function checked against how a step will call it, where the
flow is built: `map_values(lambda key, value: ...)` or `reduce(lambda a:
a)` was accepted, and failed once records flowed (or never: a reduce whose
keys each held one value ran to the end)."""

from __future__ import annotations

import inspect


def check_arity(fn, count: int, method: str, called_with: str) -> None:
    """TypeError where `fn`'s signature shows it cannot take `count`
    positional arguments (`called_with` says which, for the message).
    A callable whose signature cannot be read (a builtin such as `int`,
    `operator.itemgetter(0)`) is left to the run."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*range(count))
    except TypeError as exc:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise TypeError(f"{method}() calls its function with {called_with}; {name}{signature} cannot "
                        f"take that ({exc})") from None
