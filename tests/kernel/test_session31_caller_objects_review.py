"""Review of what a step cannot use of the caller's on kernel processes
(`kernel/execution/_caller_objects.py`): flows it refused that run right,
a refusal it missed, and what its message says.

* A global is reached only where the code reads it as a global: a
  function's `_own.conn` (an attribute) reached the module's `conn`, a
  connection the caller keeps for itself, and the flow was refused.
* A closed connection carries nothing across fork, and an in-memory
  database is each kernel's own copy (no file, no locks): refused, where
  each kernel reads its copy right.
* The refusal names the database's file, not `<sqlite3.Connection object
  at 0x...>`.
* `functools.partial(list.append, results)` is `results.append`: it ran,
  and the caller's list stayed empty.
"""

from __future__ import annotations

import functools
import sqlite3

import pytest

from kernel import Dataflow, run

pytestmark = pytest.mark.usefixtures("no_leaks")

conn = None  # the caller's own connection (a module global named as an attribute is below)


class _Own:
    """Each kernel's own connection, opened on first use into `_own.conn`."""

    conn = None
    path = ""


_own = _Own()


def _insert_through_its_own(x):
    if _own.conn is None:
        _own.conn = sqlite3.connect(_own.path, timeout=30, isolation_level=None)
    _own.conn.execute("INSERT INTO t VALUES (?)", (x,))


def _database(path):
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE t (x INTEGER)")
    connection.commit()
    return connection


def test_a_global_named_only_as_an_attribute_is_not_the_steps(tmp_path):
    """`_own.conn` is no read of the global `conn` (the caller's, kept for
    the caller): each kernel opens and writes through its own."""
    global conn
    conn = _database(tmp_path / "db.sqlite")
    _own.path = str(tmp_path / "db.sqlite")
    try:
        flow = Dataflow("each kernel's own connection, the caller's beside it")
        flow.from_iterable(range(100)).sink(_insert_through_its_own)
        run(flow, cores=2)
        assert _own.conn is None  # (each kernel opened its own)
        assert sorted(x for (x,) in conn.execute("SELECT x FROM t")) == list(range(100))
    finally:
        conn.close()
        conn = None


class _Lookup:
    """A table read from a database in __init__, the connection closed and kept."""

    def __init__(self, path) -> None:
        self.conn = sqlite3.connect(path)
        self.table = dict(self.conn.execute("SELECT x, x * x FROM t"))
        self.conn.close()

    def get(self, x):
        return self.table.get(x)


def test_a_closed_connection_the_step_holds_is_not_refused(tmp_path):
    connection = _database(tmp_path / "db.sqlite")
    connection.executemany("INSERT INTO t VALUES (?)", [(x,) for x in range(50)])
    connection.commit()
    connection.close()
    lookup = _Lookup(tmp_path / "db.sqlite")
    flow = Dataflow("a table read before the run")
    out = flow.from_iterable(range(60)).map(lookup.get).collect()
    run(flow, cores=2)
    assert sorted(out.items, key=lambda v: (v is None, v)) == [x * x for x in range(50)] + [None] * 10


def test_an_in_memory_database_is_each_kernels_copy_and_a_file_still_refused(tmp_path):
    memory = sqlite3.connect(":memory:")
    try:
        memory.execute("CREATE TABLE squares (x INTEGER PRIMARY KEY, y INTEGER)")
        memory.executemany("INSERT INTO squares VALUES (?, ?)", [(x, x * x) for x in range(100)])
        memory.commit()
        flow = Dataflow("a lookup in memory")
        out = (flow.from_iterable(range(100))
               .map(lambda x: memory.execute("SELECT y FROM squares WHERE x = ?", (x,)).fetchone()[0])
               .collect())
        run(flow, cores=2)
        assert sorted(out.items) == [x * x for x in range(100)]
    finally:
        memory.close()

    # a temporary database ("") has a file of its own once it spills, shared by every fork: refused
    temporary = sqlite3.connect("")
    try:
        flow = Dataflow("a temporary database")
        flow.from_iterable(range(10)).sink(lambda x: temporary.execute("SELECT ?", (x,)))
        with pytest.raises(ValueError, match="uses a SQLite connection opened before the run"):
            run(flow, cores=2)
    finally:
        temporary.close()


@pytest.mark.parametrize("through", ["connection", "cursor"])
def test_the_refusal_names_the_database_file(tmp_path, through):
    connection = _database(tmp_path / "db.sqlite")
    try:
        writer = connection if through == "connection" else connection.cursor()
        flow = Dataflow("into the caller's database")
        flow.from_iterable(range(10)).sink(lambda x: writer.execute("INSERT INTO t VALUES (?)", (x,)))
        with pytest.raises(ValueError) as raised:
            run(flow, cores=2)
        message = str(raised.value)
        assert message.startswith(f"sink(<lambda>) (step 1): its function uses a SQLite {through} opened "
                                  f"before the run (its database: {tmp_path / 'db.sqlite'}), "), message
        assert "object at 0x" not in message, message
    finally:
        connection.close()


@pytest.mark.parametrize("which", ["list.append", "set.add", "dict.update", "bound"])
def test_a_partial_of_an_adding_method_over_the_callers_container_is_refused(which):
    container, fn = {
        "list.append": lambda: ([], lambda c: functools.partial(list.append, c)),
        "set.add": lambda: (set(), lambda c: functools.partial(set.add, c)),
        "dict.update": lambda: ({}, lambda c: functools.partial(dict.update, c)),
        "bound": lambda: ([], lambda c: functools.partial(c.append)),
    }[which]()
    said = {"bound": "list.append"}.get(which, which)
    records = [{x: x} for x in range(10)] if which == "dict.update" else list(range(10))
    flow = Dataflow("a partial adding to the caller's")
    flow.from_iterable(records).sink(fn(container))
    with pytest.raises(ValueError) as raised:
        run(flow, cores=2)
    message = str(raised.value)
    assert f"its function is {said} of a {type(container).__name__} of the caller's" in message, message
    assert not container
    run(flow)  # one kernel, in the caller's process
    assert len(container) == 10

