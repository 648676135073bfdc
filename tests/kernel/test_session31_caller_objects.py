"""What a step cannot use of the caller's on kernel processes, refused
before any kernel starts, saying what to use instead: one of the caller's
containers' adding methods as its function (`sink(results.append)`: each
kernel added to its own copy, and the caller's container stayed empty,
without a word; on one kernel it held every record), and a SQLite
connection opened before the run (each kernel's inserts through its
forked copy were never committed: none of 1,000 rows)."""

from __future__ import annotations

import asyncio
import collections
import sqlite3

import pytest

from kernel import Dataflow, run, run_async

pytestmark = pytest.mark.usefixtures("no_leaks")


def _containers():
    return {
        "list.append": ([], lambda c: c.append, "list.append"),
        "set.add": (set(), lambda c: c.add, "set.add"),
        "dict.update": ({}, lambda c: c.update, "dict.update"),
        "deque.append": (collections.deque(), lambda c: c.append, "deque.append"),
        "Counter.update": (collections.Counter(), lambda c: c.update, "Counter.update"),
        "UserList.append": (collections.UserList(), lambda c: c.append, "UserList.append"),
    }


@pytest.mark.parametrize("which", list(_containers()))
@pytest.mark.parametrize("step", ["sink", "inspect"])
def test_a_step_adding_to_a_callers_container_is_refused_on_two_kernels_and_runs_on_one(which, step):
    container, method, said = _containers()[which]
    # what each method takes: a dict (dict.update), an iterable (Counter.update: its items counted)
    records = {"dict.update": [{i: i} for i in range(10)],
               "Counter.update": [(i,) for i in range(10)]}.get(which, list(range(10)))
    flow = Dataflow("adding to the caller's")
    stream = flow.from_iterable(records)
    if step == "sink":
        stream.sink(method(container))
    else:
        stream.inspect(method(container)).collect()
    with pytest.raises(ValueError) as raised:
        run(flow, cores=2)
    message = str(raised.value)
    assert f"its function is {said} of a {type(container).__name__} of the caller's" in message, message
    assert "on 2 kernel processes each would add to its own copy" in message, message
    assert ".collect()" in message and "cores=1" in message, message
    assert not container  # refused before any kernel ran

    run(flow)  # one kernel, in the caller's process: it holds every record
    assert len(container) == 10


def test_run_async_on_two_kernels_refuses_it_too():
    seen: list = []
    flow = Dataflow("adding to the caller's")
    flow.from_iterable(range(5)).sink(seen.append)
    with pytest.raises(ValueError, match=r"list\.append of a list of the caller's"):
        asyncio.run(run_async(flow, cores=2))


def test_a_function_doing_more_with_a_container_runs_on_two_kernels():
    """A function that uses a container of its own (a buffer written out
    now and then) is no caller's container: it runs, each kernel with its
    own copy."""
    buffer: list = []
    written: list = []

    def buffered(record):
        buffer.append(record)
        if len(buffer) >= 4:
            written.append(len(buffer))
            buffer.clear()

    flow = Dataflow("a buffer of its own")
    out = flow.from_iterable(range(20)).inspect(buffered).collect()
    run(flow, cores=2)
    assert sorted(out.items) == list(range(20))


class _Published(list):
    """A list whose append does something else of its own (here, writes
    to a file): its method is the user's, not the list's."""

    def __init__(self, path) -> None:
        super().__init__()
        self.path = path

    def append(self, record) -> None:
        with open(self.path, "a") as f:
            f.write(f"{record}\n")


def test_a_containers_subclass_with_an_adding_method_of_its_own_runs_on_two_kernels(tmp_path):
    published = _Published(tmp_path / "out.txt")
    flow = Dataflow("a method of the user's own")
    flow.from_iterable(range(10)).sink(published.append)
    run(flow, cores=2)
    assert sorted(map(int, (tmp_path / "out.txt").read_text().split())) == list(range(10))


def _database(path):
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE t (x INTEGER)")
    connection.commit()
    return connection


@pytest.mark.parametrize("through", ["connection", "cursor"])
def test_a_sqlite_connection_of_the_callers_is_refused_on_two_kernels_and_written_on_one(tmp_path, through):
    connection = _database(tmp_path / "db.sqlite")
    try:
        writer = connection if through == "connection" else connection.cursor()

        def insert(x):
            writer.execute("INSERT INTO t VALUES (?)", (x,))

        flow = Dataflow("into the caller's database")
        flow.from_iterable(range(1000)).sink(insert)
        with pytest.raises(ValueError) as raised:
            run(flow, cores=2)
        message = str(raised.value)
        assert message.startswith(f"sink(insert) (step 1): its function uses a SQLite {through} opened "
                                  "before the run"), message
        assert "2 kernel processes cannot share" in message and "Operator's open()" in message, message
        run(flow)  # one kernel, in the caller's process
        connection.commit()
        assert connection.execute("SELECT COUNT(*) FROM t").fetchone() == (1000,)
    finally:
        connection.close()


class _OwnConnection:
    """Each kernel's own connection, opened (and committed, closed) in the kernel."""

    def __init__(self, path) -> None:
        self.path = path
        self.connection = None

    def __call__(self, x) -> None:
        if self.connection is None:
            self.connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.connection.execute("INSERT INTO t VALUES (?)", (x,))


def test_a_connection_each_kernel_opens_itself_runs_on_two_kernels(tmp_path):
    _database(tmp_path / "db.sqlite").close()
    flow = Dataflow("each kernel's own connection")
    flow.from_iterable(range(100)).sink(_OwnConnection(str(tmp_path / "db.sqlite")))
    run(flow, cores=2)
    connection = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        assert connection.execute("SELECT COUNT(*) FROM t").fetchone() == (100,)
    finally:
        connection.close()


def test_a_sources_sqlite_cursor_is_read_on_two_kernels_every_row_once(tmp_path):
    """`from_iterable(connection.execute(...))`: each kernel reads the
    cursor whole and keeps its share, as any iterator (it was refused,
    its message speaking of writes, once the check looked at sources)."""
    connection = _database(tmp_path / "db.sqlite")
    try:
        connection.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(5000)])
        connection.commit()
        flow = Dataflow("from the caller's database")
        out = flow.from_iterable(connection.execute("SELECT x FROM t")).collect()
        run(flow, cores=2)
    finally:
        connection.close()
    assert sorted(x for (x,) in out.items) == list(range(5000))
