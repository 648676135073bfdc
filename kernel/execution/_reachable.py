"""What a step can reach of the caller's: the objects of some kinds found
from a step's factory through the functions it was given (their
closures, defaults and the globals their code reads or writes, bound methods'
objects) and the objects those hold, a few hops deep, nearest first.

Used before kernel processes fork and in them: the files a flow's steps
write to (`_written_files.py`), and what no kernel process can use of the
caller's (`_caller_objects.py`). Bounded: at most _LOOKED_AT objects a
step; big containers, modules and classes are not looked into (a module's
or a class's namespace would reach everything it has).
"""

from __future__ import annotations

import collections
import dis
import gc
import types

_LOOKED_AT = 256  # objects at most from each step
_SMALL = 64  # a tuple, list, set, dict or deque of more items is not looked into


def reachable(root, kinds) -> list:
    """The objects that are instances of `kinds` reachable from `root`
    (not looked into themselves), breadth-first: a file three hops away
    beside a few nested lists was never reached depth-first, the walk
    spent inside the lists."""
    found = []
    seen = {id(root)}
    todo = collections.deque([root])
    looked = 0
    while todo and looked < _LOOKED_AT:
        obj = todo.popleft()
        looked += 1
        try:
            if isinstance(obj, kinds):
                found.append(obj)
                continue
            refs = _references(obj)
        except Exception:  # an object's own __class__ or __getattr__ failing: not looked into
            continue
        for ref in refs:
            if id(ref) not in seen:
                seen.add(id(ref))
                todo.append(ref)
    return found


def _references(obj) -> list:
    if isinstance(obj, (type, types.ModuleType, str, bytes, int, float)):
        return []  # (a module's or a class's namespace would reach every file it has)
    if isinstance(obj, types.FunctionType):
        refs = []
        for cell in obj.__closure__ or ():
            try:
                refs.append(cell.cell_contents)
            except ValueError:  # a cell not yet assigned
                pass
        refs += obj.__defaults__ or ()
        refs += (obj.__kwdefaults__ or {}).values()
        names = _names(obj.__code__)
        refs += [obj.__globals__[name] for name in names if name in obj.__globals__]
        return refs
    if isinstance(obj, (types.MethodType, types.BuiltinMethodType)):
        return [obj.__self__, getattr(obj, "__func__", None)]
    if isinstance(obj, (tuple, list, set, frozenset, dict, collections.deque)) and len(obj) > _SMALL:
        return []
    refs = gc.get_referents(obj)
    # any other container of many items (an array of objects, a user's
    # collection type): iterating its items took seconds (a deque of
    # 3,000,000: ~2 s, in the launcher and again in each kernel)
    return refs if len(refs) <= 2 * _SMALL else []


# the instructions whose name is a global's (co_names also holds attributes' names:
# `_own.conn` reached the module's `conn`, the caller's connection, and refused the flow)
_GLOBAL_NAME_OPS = frozenset({"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME",
                              "LOAD_FROM_DICT_OR_GLOBALS"})


def _names(code: types.CodeType) -> set[str]:
    """The global names `code` and the functions defined in it read (or
    write: a file a function opens on first use into a global)."""
    names = {ins.argval for ins in dis.get_instructions(code) if ins.opname in _GLOBAL_NAME_OPS}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


