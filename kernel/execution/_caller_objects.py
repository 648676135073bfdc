"""What a step cannot use of the caller's where the kernels are processes:
refused before any of them starts, saying what to use instead.

* An adding method of one of the caller's containers as the step's
  function (`sink(results.append)`, `inspect(seen.add)`, a dict's or a
  `Counter`'s `update`, a deque's or a `UserList`'s `append`): each kernel
  process appended to its own (forked) copy, and the caller's list stayed
  empty, without a word; on one kernel it holds every record. Such a
  function has no other effect. A function that does more with a container (a buffer it writes
  out now and then), or a subclass's method of its own, is left alone.
* A SQLite connection or cursor opened before the run, reachable from a
  step's function (`_reachable.reachable`): SQLite must not be carried
  across `fork` (its locks are the process's own), and what each kernel
  inserted through its copy was never committed: of 1,000 rows on two
  kernels, none were there after the caller's commit. A closed one, one
  of a database in memory (each kernel's own copy, as a dict of the
  caller's is), and a source's cursor (`from_iterable(connection.execute(
  ...))`: read whole by each kernel, as any iterator is) are left alone.
"""

from __future__ import annotations

import collections
import functools
import os
import sys
import types

from ._reachable import reachable

# containers and the methods of theirs that only add to them (or change them)
_CONTAINERS = (list, set, dict, collections.deque, bytearray, collections.UserList, collections.UserDict)
_ADDING = frozenset({"append", "extend", "insert", "add", "update", "setdefault", "__setitem__",
                     "appendleft", "extendleft", "__iadd__", "__ior__"})


def refuse_caller_objects(graph, kernels: str) -> None:
    """ValueError for the first step that uses what no kernel process can
    (`kernels`: how the run's kernels are called, for the message)."""
    sqlite3 = sys.modules.get("sqlite3")  # (not imported: no connection of the caller's)
    databases = () if sqlite3 is None else (sqlite3.Connection, sqlite3.Cursor)
    for node in graph.nodes:
        for fn in _functions_of(node.factory):
            method = _adding_method(fn)
            if method is not None:
                container, fn = method.__self__, method
                kind = type(container).__name__
                raise ValueError(
                    f"{node.label}: its function is {kind}.{fn.__name__} of a {kind} of the caller's, and "
                    f"on {kernels} each would add to its own copy: the caller's {kind} would stay as it "
                    f"is. Gather the records with .collect() (its .items hold every kernel's), or run on "
                    f"one core (cores=1), in the caller's process"
                )
        # (not a source's: `from_iterable(connection.execute(...))` is read, whole, by each kernel,
        # as any iterator is, and gives every row once on several kernels)
        if databases and not node.is_source:
            shared = [(db, where) for db in reachable(node.factory, databases)
                      if (where := _shared_database(db, sqlite3)) is not None]
            if shared:
                db, where = shared[0]
                raise ValueError(
                    f"{node.label}: its function uses a SQLite {type(db).__name__.lower()} opened "
                    f"before the run (its database: {where}), which {kernels} cannot share: SQLite must "
                    f"not be carried across fork, and what each kernel wrote through its copy would never be "
                    f"committed. Open the connection in the kernel (an Operator's open(), closed in "
                    f"close()), write the records from the caller after .collect(), or run on one core "
                    f"(cores=1)"
                )


def _shared_database(db, sqlite3) -> str | None:
    """The database file(s) of a connection (or a cursor's) that kernel
    processes would share, for the message; None for one they would not:
    closed (nothing of it crosses fork), or a database in memory (each
    kernel reads and writes its own copy, as it does a dict of the
    caller's: no file, no locks). A temporary database ("") is a file of
    its own once it spills: shared."""
    connection = db.connection if isinstance(db, sqlite3.Cursor) else db
    try:
        connection.total_changes  # noqa: B018 (closed: ProgrammingError)
    except sqlite3.ProgrammingError:
        return None
    try:
        cursor = connection.cursor()
        cursor.row_factory = None  # (the connection's may make rows of its own)
        files = [os.fsdecode(file) if isinstance(file, bytes) else str(file)  # (text_factory=bytes)
                 for (_seq, _name, file) in cursor.execute("PRAGMA database_list")]
        journal = cursor.execute("PRAGMA main.journal_mode").fetchone()[0]
        cursor.close()
    except sqlite3.Error:  # another thread's connection (check_same_thread): its files unknown
        return "not known, the connection is another thread's"
    if not any(files) and str(journal).lower() == "memory":
        return None
    return ", ".join(file or "a temporary file" for file in files)


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


def _adding_method(fn):
    """The adding method of a container (bound) that `fn` is, or None: the
    method itself, or a partial that is no more than it
    (`partial(list.append, results)`, `partial(results.append)`); a
    partial given more is a function doing more, as a lambda is."""
    if isinstance(fn, functools.partial):
        if fn.keywords:
            return None
        if not fn.args:
            return _adding_method(fn.func)
        if len(fn.args) != 1 or not isinstance(fn.args[0], _CONTAINERS):
            return None
        try:
            container, name = fn.args[0], getattr(fn.func, "__name__", None)
        except Exception:  # a callable object's own __getattr__ failing: no container's method
            return None
        if not isinstance(name, str) or getattr(type(container), name, None) is not fn.func:
            return None  # (not the container's own method: a subclass's override, another's)
        fn = getattr(container, name)
    return fn if _container_added_to(fn) is not None else None


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
