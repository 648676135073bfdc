"""A store that a later version of this library wrote, with a table this
version does not know, is refused as another version's (its format named),
not as "another program's database?" (found by a review); a database of
another program's with a `meta` table of its own still is that."""

from __future__ import annotations

import sqlite3

import pytest

from kernel import Dataflow, run
from state import StateError


def _flow(tmp_path):
    flow = Dataflow("versions")
    flow.from_iterable(range(100)).key_by(lambda x: x % 3).count().to_files(tmp_path / "out")
    return flow


def _tables_and_meta(path):
    db = sqlite3.connect(path)
    try:
        tables = sorted(t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        return tables, sorted(db.execute("SELECT * FROM meta").fetchall())
    finally:
        db.close()


def test_a_store_of_a_later_version_with_a_table_of_its_own_is_refused_naming_its_format(tmp_path):
    state = tmp_path / "state"
    run(_flow(tmp_path), state_dir=state, epoch_interval=0.01)
    db = sqlite3.connect(state / "snapshots.sqlite")
    db.execute("CREATE TABLE timers (epoch INTEGER, kernel INTEGER, blob BLOB)")  # a later version's table
    db.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    db.commit()
    db.close()
    before = _tables_and_meta(state / "snapshots.sqlite")
    with pytest.raises(StateError) as info:
        run(_flow(tmp_path), state_dir=state, epoch_interval=0.01)
    assert str(info.value) == (
        f"state_dir {str(state)!r}: snapshots.sqlite holds snapshots that another version of this library "
        "wrote (format 99, with the tables timers, which this version does not know); finish that run with "
        "the version that wrote it, or use a fresh state_dir")
    assert _tables_and_meta(state / "snapshots.sqlite") == before


def test_another_programs_database_with_a_meta_table_of_its_own_is_still_no_snapshot_store(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "snapshots.sqlite")
    db.execute("CREATE TABLE meta (id INTEGER PRIMARY KEY, note TEXT, author TEXT)")
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO meta (note, author) VALUES ('v1', 'ann')")
    db.commit()
    db.close()
    with pytest.raises(StateError) as info:
        run(_flow(tmp_path), state_dir=state, epoch_interval=0.01)
    assert "snapshots.sqlite is no snapshot store (it holds the tables users: another program's database?)" \
        in str(info.value)
