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
        # (the callable's own signature: a decorator's wrapper that takes one
        # record and calls `fn(*record)` has `__wrapped__` pointing at the
        # two-parameter function, whose signature inspect follows by default)
        signature = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*range(count))
    except TypeError as exc:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise TypeError(f"{method}() calls its function with {called_with}; {name}{signature} cannot "
                        f"take that ({exc})") from None


def is_async(fn) -> bool:
    """Whether calling `fn` gives a coroutine or an async generator: an
    `async def` function, or an object whose class's `__call__` is one."""
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return True
    if inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, type):
        return False
    call = next((klass.__dict__["__call__"] for klass in type(fn).__mro__ if "__call__" in klass.__dict__),
                None)
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


def check_not_async(fn, method: str) -> None:
    """TypeError for an async callable given to a step that calls it and
    does not await what it returns (its coroutines were dropped: a sink's
    records lost, a window's results coroutine objects)."""
    if is_async(fn):
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        raise TypeError(f"{method}() calls its function for each record and does not await what it "
                        f"returns: {name} is async (await it in a source of your own, "
                        "`from_async_iterable`, or a function that runs it: `asyncio.run`)")
