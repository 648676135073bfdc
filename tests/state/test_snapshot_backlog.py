"""One kernel whose snapshots are written slower than its epochs come: it
starts epoch n only once n - AHEAD is written and complete, so what waits
for the writer thread stays bounded (each waiting snapshot is a pickle of
the whole state, in memory). Before, epochs came on their timer whatever
the writer's pace: with a 1 ms interval and a writer taking 10 ms a
snapshot, the kernel had started 88 epochs past the one being written."""

from __future__ import annotations

import threading
import time

from kernel import Dataflow, Source, run
from kernel.runtime._epochs import AHEAD
from state import SnapshotStore


class Slow(Source):
    """100 polls of one record, each taking ~1 ms: ~100 intervals of 1 ms.
    Notes the epochs the runtime starts (their markers leave it here)."""

    def __init__(self, started: list):
        self.started = started
        self.left = 100

    def poll(self):
        time.sleep(0.001)
        self.emit([self.left])
        self.left -= 1
        return self.left > 0

    def on_epoch(self, epoch):
        self.started.append(epoch)
        return self.left


def test_epochs_wait_for_a_slow_writer_on_one_kernel(tmp_path, monkeypatch):
    started: list = []
    behind: list = []  # epochs started past the one being written, at each write
    write = SnapshotStore.write

    def slow_write(self, epoch, kernel, blob):
        if threading.current_thread() is not threading.main_thread() and epoch != self.FINAL:
            behind.append(max(started) - epoch)
            time.sleep(0.01)
        write(self, epoch, kernel, blob)

    monkeypatch.setattr(SnapshotStore, "write", slow_write)
    flow = Dataflow("backlog")
    out = flow.source(lambda: Slow(started), name="slow").collect()
    run(flow, state_dir=tmp_path, epoch_interval=0.001)
    assert sorted(out.items) == list(range(1, 101))
    assert len(behind) >= 3, behind
    assert max(behind) <= AHEAD - 1, behind  # (epoch e is written while e + 1 aligns)
