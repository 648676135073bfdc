"""A step whose function adds to one of the caller's containers, refused
where the kernels are processes.

`flow.from_iterable(data).sink(results.append)`, then `run(flow, cores=2)`:
each kernel process appends to its own copy of `results` (forked), and the
caller's list stays empty, without a word; on one kernel it holds every
record. Such a function (a list's `append`, a set's `add`, a dict's
`update`, a deque's `append`... given as the step's function itself) has
no other effect, so on kernel processes the run is refused before any of
them starts, saying what to use instead (`collect()`). A function that
does more with a container of its own (a buffer it writes out now and
then) is left alone: the kernel keeps its own copy, as it should.
"""

from __future__ import annotations

import collections
import functools
import types

# containers and the methods of theirs that only add to them (or change them)
_CONTAINERS = (list, set, dict, collections.deque, bytearray)
_ADDING = frozenset({"append", "extend", "insert", "add", "update", "setdefault", "__setitem__",
                     "appendleft", "extendleft", "__iadd__", "__ior__"})


def refuse_caller_containers(graph, kernels: str) -> None:
    """ValueError for the first step whose function is a container's adding
    method (`kernels`: how the run's kernels are called, for the message)."""
    for node in graph.nodes:
        for fn in _functions_of(node.factory):
            container = _container_added_to(fn)
            if container is not None:
                kind = type(container).__name__
                raise ValueError(
                    f"{node.label}: its function is {kind}.{fn.__name__} of a {kind} of the caller's, and "
                    f"on {kernels} each would add to its own copy: the caller's {kind} would stay as it "
                    f"is. Gather the records with .collect() (its .items hold every kernel's), or run on "
                    f"one core (cores=1), in the caller's process"
                )


def _functions_of(factory) -> list:
    """The callables a step's factory was given (a partial's arguments, a
    closure's cells): the user's functions, as the flow's API wraps them."""
    found = []
    if isinstance(factory, functools.partial):
        found += [*factory.args, *factory.keywords.values()]
    if isinstance(factory, types.FunctionType):
        for cell in factory.__closure__ or ():
            try:
                found.append(cell.cell_contents)
            except ValueError:  # a cell not yet assigned
                pass
    return [fn for fn in found if callable(fn)]


def _container_added_to(fn):
    """The container `fn` is an adding method of (bound), or None."""
    if not isinstance(fn, (types.BuiltinMethodType, types.MethodType, types.MethodWrapperType)):
        return None
    if isinstance(fn, types.MethodType) and getattr(fn.__func__, "__module__", None) != "collections":
        return None  # a method of the user's own (a list subclass whose append writes elsewhere)
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, _CONTAINERS) and getattr(fn, "__name__", None) in _ADDING:
        return owner
    return None
