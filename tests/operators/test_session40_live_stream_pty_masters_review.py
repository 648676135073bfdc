"""`from_iterable` with a `state_dir` over the outputs of two programs run
on pseudo-terminals of their own (`pty.openpty()`'s master of each): a
terminal was one stream by its inode, and each master has `/dev/ptmx`'s,
so the two were one stream, and the run was refused as reading a stream
through two iterators. A terminal is now the device its descriptor reads,
a master told from its terminal."""

from __future__ import annotations

import os
import pty

import pytest

from kernel import Dataflow, run


class _AllSeen(Exception):
    pass


def test_a_run_over_two_programs_terminals_is_not_refused(tmp_path):
    masters, terminals = [], []
    for k in range(2):
        master, terminal = pty.openpty()
        os.write(terminal, "".join(f"{k * 100 + i}\n" for i in range(5)).encode())  # (what a program wrote)
        masters.append(os.fdopen(master))
        terminals.append(terminal)
    got = []

    def seen(value):  # (the terminals stay open, silent: the run ends once it has both's lines)
        got.append(value)
        if len(got) == 10:
            raise _AllSeen
        return value

    try:
        flow = Dataflow("outputs")
        first = flow.from_iterable(masters[0], name="first")
        first.union(flow.from_iterable(masters[1], name="second")).map(int).map(seen).sink(lambda _: None)
        with pytest.raises(Exception) as failed:
            run(flow, state_dir=tmp_path / "state")
        assert isinstance(failed.value.__cause__, _AllSeen), failed.value
        assert sorted(got) == [0, 1, 2, 3, 4, 100, 101, 102, 103, 104]
    finally:
        for terminal in terminals:
            os.close(terminal)  # (the readers left waiting read the end: EIO)
        for master in masters:
            master.close()

