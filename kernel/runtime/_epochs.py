"""Epochs on one kernel: when to start one, when this kernel's part is whole.

Every `interval` seconds of the kernel's clock the runtime injects
`EpochMarker(n)` after the current batch of every live source, taking the
source's snapshot (its position) at that instant. Markers travel in band; an
operator snapshots when the marker has come on all its open inputs (the
runtime holds back what arrives behind a marker on the inputs that already
delivered it: aligned snapshots, as Chandy-Lamport and Flink). Each
instance's part is pickled at once, so later changes cannot leak into it.

This kernel's snapshot of epoch n is whole when every instance has given its
part for n or has ended (an ended instance's part says so: it stays ended in
a resumed run). Whole snapshots go, in epoch order, to `durable(epoch, blob)`
(the coordinator writes them to the store); when every instance has ended,
`finished(blob)` gets the last one. The coordinator calls the runtime's
`commit(epoch)` once an epoch is complete on every kernel.
"""

from __future__ import annotations

import pickle

ENDED = "ended"  # an instance's part once it has ended


class EpochTracker:
    def __init__(self, instances: int, durable, finished, first_epoch: int = 1) -> None:
        self._instances = instances
        self._durable = durable
        self._finished = finished
        self.next_epoch = first_epoch
        self._parts: dict[int, dict[int, bytes | str]] = {}
        self._ended: set[int] = set()
        self._flushed = first_epoch - 1  # epochs up to this one went to `durable`

    def take_epoch(self) -> int:
        """The number of the next epoch to inject. Every kernel injects every
        number in turn, at its own pace: an operator fed by two kernels
        aligns on the same number from both (the faster one waits)."""
        epoch = self.next_epoch
        self.next_epoch += 1
        return epoch

    def part(self, index: int, epoch: int, snapshot) -> None:
        """Instance `index` has aligned on `epoch`: its snapshot."""
        self._epoch(epoch)[index] = pickle.dumps(snapshot, protocol=5)
        self._flush()

    def ended(self, index: int) -> None:
        self._ended.add(index)
        for parts in self._parts.values():
            parts.setdefault(index, ENDED)
        self._flush()
        if len(self._ended) == self._instances:
            self._finished(pickle.dumps({i: ENDED for i in range(self._instances)}, protocol=5))

    def _epoch(self, epoch: int) -> dict:
        parts = self._parts.get(epoch)
        if parts is None:
            parts = self._parts[epoch] = dict.fromkeys(self._ended, ENDED)
        return parts

    def _flush(self) -> None:
        while (parts := self._parts.get(self._flushed + 1)) is not None and len(parts) == self._instances:
            epoch = self._flushed + 1
            del self._parts[epoch]
            self._flushed = epoch
            self._durable(epoch, pickle.dumps(parts, protocol=5))
