"""A byte flipped in a column's name in a store's schema.

Found by flipping random bytes of a killed run's snapshots.sqlite: one
flip in the schema's text ("blob" -> "bUob") made another valid schema,
which `PRAGMA quick_check` passes, and the resumed run stopped with
"cannot read snapshots.sqlite: no such column: blob" (or, where the
launcher read nothing of that column, "kernel 1: ... cannot write to
snapshots.sqlite: table snapshots has no column named blob", once the
run had started): the store is damaged, and the run must say so, as it
does for a damaged page, with what to do."""

from __future__ import annotations

import sqlite3

import pytest

from kernel import Dataflow, run
from state import StateError

NAME = "snapshots.sqlite"


def _flow(out) -> Dataflow:
    flow = Dataflow("damaged schema")
    flow.from_iterable(range(300)).key_by(lambda n: n % 3).count().to_files(out)
    return flow


def _flip_in_schema(path, text: bytes, at: int = 1, byte: bytes = b"Q") -> None:
    """The store file at `path` with the byte `at` of `text` (a name and
    what follows it in the schema, found once in the file; the second byte
    of a column's name by default) changed to `byte`, as a disk or a copy
    would flip it: SQLite's own pages, not through SQLite."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # (the schema in the main file)
    db.close()
    data = path.read_bytes()
    assert data.count(text) == 1
    at += data.index(text)
    path.write_bytes(data[:at] + byte + data[at + 1:])


@pytest.mark.parametrize("text, table, column", [
    (b"blob BLOB", "snapshots", "blob"),
    (b"crc INTEGER", "snapshots", "crc"),
    (b"final INTEGER", "complete", "final"),
    (b"(key TEXT", "meta", "key"),
])
def test_a_column_renamed_by_a_flipped_byte_is_a_damaged_store(tmp_path, text, table, column):
    state = tmp_path / "state"
    run(_flow(tmp_path / "out"), state_dir=state, epoch_interval=0.01)
    _flip_in_schema(state / NAME, text)
    with pytest.raises(StateError) as caught:
        run(_flow(tmp_path / "out"), state_dir=state, epoch_interval=0.01)
    message = str(caught.value)
    assert f"{NAME} is damaged (its table {table} has a column " in message
    assert f"where a snapshot store has {column!r})" in message
    assert "move the state_dir aside" in message


def test_another_programs_meta_is_still_no_damaged_store(tmp_path):
    """A table of another number of columns is not a flipped name: the
    check leaves it to what reads it (as before)."""
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / NAME)
    db.execute("CREATE TABLE meta (id INTEGER PRIMARY KEY, note TEXT, author TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StateError) as caught:
        run(_flow(tmp_path / "out"), state_dir=state)
    assert "is damaged" not in str(caught.value)


def test_a_name_flipped_to_bytes_that_are_no_utf8_is_a_damaged_store(tmp_path):
    """Found by the same random flips: a column's name in the schema that
    no longer decodes stopped the run with "cannot read snapshots.sqlite:
    Could not decode to UTF-8 column 'name' with text ...", and no word of
    what to do (the store writes only str: such bytes were changed)."""
    state = tmp_path / "state"
    run(_flow(tmp_path / "out"), state_dir=state, epoch_interval=0.01)
    _flip_in_schema(state / NAME, b"crc INTEGER", byte=b"\xff")
    with pytest.raises(StateError) as caught:
        run(_flow(tmp_path / "out"), state_dir=state, epoch_interval=0.01)
    message = str(caught.value)
    assert f"{NAME} is damaged (Could not decode to UTF-8 column 'name'" in message
    assert "move the state_dir aside" in message


def test_an_index_name_flipped_to_bytes_that_are_no_utf8_is_a_damaged_store(tmp_path):
    """Found by the same flips: an index's name in the schema that no longer
    decodes made Python's sqlite3 raise a bare UnicodeDecodeError as the
    store opened, which no handler took for the store's: the command ended
    with exit status 2 (a usage error) and only "error: 'utf-8' codec can't
    decode byte 0xd1 in position 32: invalid continuation byte", naming
    neither the state_dir nor the store."""
    state = tmp_path / "state"
    run(_flow(tmp_path / "out"), state_dir=state, epoch_interval=0.01)
    # (an index's name, as the flip found it)
    _flip_in_schema(state / NAME, b"sqlite_autoindex_snapshots_1", len(b"sqlit"), b"\xd1")
    with pytest.raises(StateError) as caught:
        run(_flow(tmp_path / "out"), state_dir=state, epoch_interval=0.01)
    message = str(caught.value)
    assert f"{NAME} is damaged (text that is no UTF-8: 'utf-8' codec can't decode byte 0xd1" in message
    assert "move the state_dir aside" in message
