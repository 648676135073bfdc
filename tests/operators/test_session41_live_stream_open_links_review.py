"""The look for the entries of closed streams in `_taken_from`
(`_forget_taken_from_closed`) reads what each open descriptor is
(`_open_links`), and since regular files are noted by their inode it
stat()ed each regular file open too, also where no entry of a regular
file was closed: with 10,000 files open, a look for closed connections'
entries took 240-330 ms of a run's first take, not 90-130 ms. Now a
regular file's descriptor is stat()ed only where a closed entry is a
regular file's, and such an entry still stands while a descriptor of the
file is open."""

from __future__ import annotations

import socket

from operators import _live_input

_FILES = 300


def _note_closed_connections(count: int) -> None:
    for _ in range(count):
        ours, theirs = socket.socketpair()
        theirs.close()
        with ours, ours.makefile("r") as stream:
            _live_input._note_taken_from(stream, _live_input._weakly(None))


def test_a_look_for_closed_connections_stats_no_regular_file(tmp_path, monkeypatch):
    monkeypatch.setattr(_live_input, "_taken_from", {})  # (this test's own, the others' back after)
    monkeypatch.setattr(_live_input, "_look_at", _live_input._KEPT_CLOSED)
    files = []
    for i in range(_FILES):
        path = tmp_path / f"{i}.txt"
        path.write_text("0\n")
        files.append(open(path))
    try:
        # (a regular file's entry, its file object closed, a descriptor of it open: it stands)
        noted = open(tmp_path / "0.txt")
        _live_input._note_taken_from(noted, _live_input._weakly(None))
        its = _live_input._what_it_reads(noted)
        noted.close()
        stats = []
        file_link = _live_input._file_link
        monkeypatch.setattr(_live_input, "_file_link", lambda status: stats.append(1) or file_link(status))
        for _ in range(2):  # (a look, its entry kept; then another)
            del stats[:]
            _note_closed_connections(_live_input._look_at)
            assert len(_live_input._taken_from) < _live_input._KEPT_CLOSED  # (it did look)
            assert its in _live_input._taken_from  # (it stands)
            assert 0 < len(stats) < 10, f"{len(stats)} regular files stat()ed in a look"
        files[0].close()
        del stats[:]
        _note_closed_connections(_live_input._look_at)  # (none of it open: its entry goes)
        assert its not in _live_input._taken_from
        assert len(stats) >= _FILES - 1  # (each open file looked at, once)
        del stats[:]
        _note_closed_connections(_live_input._look_at)  # (no file's entry closed: no stat)
        assert len(_live_input._taken_from) < _live_input._KEPT_CLOSED
        assert stats == [], f"{len(stats)} regular files stat()ed for closed connections' entries"
    finally:
        for file in files:
            file.close()
