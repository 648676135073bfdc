"""Session 40: what a kernel that has ended left unread on its answer pipe
is read for its notes only (`read_notes`, after a failure ended the run). A
kernel's results that do not load in the launcher (an object whose class
refuses to be rebuilt there) raised out of `run_on_cores`' clean-up, hiding
the run's own error and leaving the other pipes open; they are dropped, and
the notes around them are still taken."""

from __future__ import annotations

import multiprocessing

from kernel.execution import _launcher_notes


def _refuses(*_):
    raise RuntimeError("this object does not load here")


class _LoadsNowhere:
    def __reduce__(self):
        return (_refuses, ())


def test_an_unread_answer_that_does_not_load_is_dropped_and_the_notes_around_it_taken(monkeypatch):
    taken = []
    monkeypatch.setitem(_launcher_notes._handlers, "session 40", taken.append)
    reader, writer = multiprocessing.Pipe(duplex=False)
    writer.send(("note", ("session 40", 1)))
    writer.send(("ok", [_LoadsNowhere()]))  # (a kernel's results, written as the run failed)
    writer.send(("note", ("session 40", 2)))
    writer.close()
    _launcher_notes.read_notes(reader)
    reader.close()
    assert taken == [1, 2]
