"""Runs over connections' file objects (`sock.makefile()`), each closed
after its run while its connection stays open (an answer to send, the
next request): the record of the streams a run took lines of keeps a
socket's entry while a descriptor of it is open, looked up in
/proc/self/fd once `_KEPT_CLOSED` closed entries wait. Where that many
stayed open, every later run's first take looked again: 110 ms a run in a
process with 18,000 descriptors open, not 3 ms. Now the next look waits
for as many more as the last one kept."""

from __future__ import annotations

import pytest
from _live_streams import connection_with, run_over_connection

from operators import _live_input


def test_connections_kept_open_are_not_looked_up_at_each_run(tmp_path, monkeypatch):
    # (the threshold it leaves raised goes back after: another test counts the entries)
    monkeypatch.setattr(_live_input, "_look_at", _live_input._look_at)
    kept = []
    try:
        for _ in range(_live_input._KEPT_CLOSED + 6):
            connection = connection_with("1\n2\n")
            kept.append(connection)
            assert run_over_connection(connection) == [1, 2]
        looks = []
        open_links = _live_input._open_links
        monkeypatch.setattr(_live_input, "_open_links", lambda *given: looks.append(1) or open_links(*given))
        for _ in range(20):
            with connection_with("3\n4\n") as connection:
                assert run_over_connection(connection) == [3, 4]
        assert len(looks) <= 1
        # (each kept connection's entry stands: a run with a state_dir over
        # another file object of one is still refused)
        with pytest.raises(Exception, match="an earlier run of this process read lines of its input"):
            run_over_connection(kept[0], state_dir=tmp_path / "state")
    finally:
        for connection in kept:
            connection.close()
