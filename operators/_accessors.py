"""User functions that only read their argument, run as C code.

`key_by(lambda e: e[0])`, `timestamp=lambda e: e.time`, `key_by(lambda w: w)`:
each such function costs a Python call per record (~30 ns on Python 3.11),
which is most of what a batch loop pays beyond a hand-written loop that
reads the field inline (benches/pipelines.py: word count's `word_key`, the
windowed sum's three functions). A plain function whose whole body is
`return arg[CONSTANT]`, `return arg.name` or `return arg` does what
`operator.itemgetter(CONSTANT)`, `operator.attrgetter("name")` or nothing
at all does: `arg[CONSTANT]` and `itemgetter` both call
`type(arg).__getitem__`, and raise the same exceptions. The batch loops then
run `map()` of the getter (~11 ns a record) or take the records as they
are (`IDENTITY`). Polars recognises simple lambdas from their bytecode in
the same way (its `BytecodeParser`).

What a user sees is the same: the same results, the same exceptions, and
errors that still name the user's function, its step and the record (the
traceback has no frame of the function, which did not run). Recognised from
the bytecode, exactly: a plain function (not a method, builtin or callable
object) with one positional parameter, no closure, no generator, whose
instructions only load that parameter, then at most one constant index or
attribute, or a tuple of two or more such indexes (`(e[2], e[0])`:
`itemgetter(2, 0)`) or of such attributes, and return it. Anything else
(`e[1:2]`, `e[k]` with a default `k`, a global, a second step, a
decorator's wrapper) runs as written.
"""

from __future__ import annotations

import dis
import inspect
from operator import attrgetter, itemgetter
from types import FunctionType


class _Identity:
    """`accessor(fn)` for a function that returns its argument as it is:
    one object, the same after a copy or a pickle (compared with `is`)."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "IDENTITY"

    def __repr__(self) -> str:
        return "IDENTITY"


IDENTITY = _Identity()

# Instructions that do nothing a record could notice (3.11-3.13's RESUME,
# and padding); 3.14 loads a parameter by LOAD_FAST_BORROW, a small int by
# LOAD_SMALL_INT, and subscribes by BINARY_OP with the "[]" operator.
_IGNORED = frozenset({"RESUME", "NOP", "CACHE"})
_LOAD_ARGUMENT = frozenset({"LOAD_FAST", "LOAD_FAST_BORROW"})
_LOAD_CONSTANT = frozenset({"LOAD_CONST", "LOAD_SMALL_INT"})
_UNLIKE_A_PLAIN_READ = (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS | inspect.CO_GENERATOR
                        | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
                        | inspect.CO_ITERABLE_COROUTINE)


def accessor(fn):
    """`IDENTITY`, an `itemgetter` or an `attrgetter` that does what `fn`
    does to a record, or None where `fn` is anything else."""
    if type(fn) is not FunctionType:
        return None
    code = fn.__code__
    if (code.co_argcount != 1 or code.co_kwonlyargcount or code.co_posonlyargcount > 1
            or code.co_flags & _UNLIKE_A_PLAIN_READ or code.co_freevars or code.co_cellvars):
        return None
    steps = [i for i in dis.get_instructions(code) if i.opname not in _IGNORED]
    if len(steps) < 2 or steps[-1].opname != "RETURN_VALUE":
        return None
    body = steps[:-1]
    if body[-1].opname == "BUILD_TUPLE":  # `(e[0], e[2])`: itemgetter(0, 2) makes the same tuple
        reads = _reads(body[:-1])
        if reads is None or len(reads) != body[-1].arg or len(reads) < 2:
            return None
        kinds = {kind for kind, _ in reads}
        if kinds == {"index"}:
            return itemgetter(*(key for _, key in reads))
        if kinds == {"attribute"}:
            return attrgetter(*(name for _, name in reads))
        return None
    reads = _reads(body)
    if reads is None or len(reads) != 1:
        return None
    kind, key = reads[0]
    if kind == "record":
        return IDENTITY
    return itemgetter(key) if kind == "index" else attrgetter(key)


def _reads(steps: list) -> list | None:
    """The instructions `steps` as reads of the parameter, each
    ("record", None), ("index", constant) or ("attribute", name); None
    where they are anything else."""
    reads = []
    at = 0
    while at < len(steps):
        if steps[at].opname not in _LOAD_ARGUMENT or steps[at].arg != 0:
            return None
        after = steps[at + 1 : at + 3]
        if (len(after) == 2 and after[0].opname in _LOAD_CONSTANT
                and (after[1].opname == "BINARY_SUBSCR"
                     or (after[1].opname == "BINARY_OP" and after[1].argrepr == "[]"))):
            reads.append(("index", after[0].argval))
            at += 3
        elif after and after[0].opname == "LOAD_ATTR" and "NULL" not in after[0].argrepr:
            reads.append(("attribute", after[0].argval))
            at += 2
        else:
            reads.append(("record", None))
            at += 1
    return reads
