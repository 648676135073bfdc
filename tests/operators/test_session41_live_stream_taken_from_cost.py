"""The record of the live streams a run took lines of (`_taken_from`):
each run's first take went over every entry, looking for those of streams
closed since, 3.7 ms a run where 9,000 connections' file objects had been
closed and the connections kept open. Now the entries are looked over
once they have doubled: over 20 runs, fewer looks at an entry than there
are entries (there were 20 times as many), and each kept connection's
entry still stands (a run with a state_dir over it is refused)."""

from __future__ import annotations

import pytest
from _live_streams import connection_with, run_over_connection

from operators import _live_input

_KEPT = 1_000


def test_a_runs_first_take_does_not_look_over_every_stream_taken_from(tmp_path, monkeypatch):
    monkeypatch.setattr(_live_input, "_taken_from", {})  # (this test's own, the others' back after)
    monkeypatch.setattr(_live_input, "_look_at", _live_input._KEPT_CLOSED)
    kept = []
    try:
        for _ in range(_KEPT):  # (as runs over them note them, without the runs)
            connection = connection_with("")
            kept.append(connection)
            with connection.makefile("r") as stream:
                _live_input._note_taken_from(stream, _live_input._weakly(None))
        assert len(_live_input._taken_from) == _KEPT
        looks = []
        closed = _live_input._closed
        monkeypatch.setattr(_live_input, "_closed", lambda stream: looks.append(1) or closed(stream))
        for i in range(20):
            with connection_with(f"{i}\n{i + 1}\n") as connection:
                assert run_over_connection(connection) == [i, i + 1]
        assert len(looks) < _KEPT
        with pytest.raises(Exception, match="an earlier run of this process read lines of its input"):
            run_over_connection(kept[0], state_dir=tmp_path / "state")
    finally:
        for connection in kept:
            connection.close()
