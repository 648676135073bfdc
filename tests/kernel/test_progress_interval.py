"""Past two kernels a watermark goes to the other kernels at most once every
`progress_interval(peers)` (kernel/runtime/_exchange.py): the other kernels
see far fewer watermarks than the kernel that made them, never more than one
an interval, and the latest one still comes without anything after it (a
timer sends it), before the end of input."""

from __future__ import annotations

import mmap
import struct
import time

import pytest

from kernel import Dataflow, Operator, Source, run
from kernel.runtime._exchange import progress_interval

pytestmark = pytest.mark.usefixtures("no_leaks")

KERNELS = 4
SLOT = struct.Struct("<d")
# slots (8 bytes each): 0-3 watermarks seen by kernel k; 4-7 the highest one;
# 8 the source's first poll (monotonic); 9 its last; 10 set once the source
# saw a remote kernel reach its last watermark before giving up waiting
FIRST, LAST, SEEN_IN_TIME = 8, 9, 10


def _get(shared, slot: int) -> float:
    return SLOT.unpack_from(shared, slot * 8)[0]


def _set(shared, slot: int, value: float) -> None:
    SLOT.pack_into(shared, slot * 8, value)


class Ticks(Source):
    """On kernel 0: `count` polls, each a record and a watermark one higher;
    then (`wait`) polls that emit nothing until a remote kernel has seen the
    last watermark, or 10 s."""

    def __init__(self, shared, count: int, wait: bool = False) -> None:
        self.shared, self.count, self.wait = shared, count, wait
        self.polls = 0
        self.deadline = None

    def poll(self):
        if self.context.index != 0:
            return False
        now = time.monotonic()
        if self.polls < self.count:
            if not self.polls:
                _set(self.shared, FIRST, now)
            self.polls += 1
            self.emit([(self.polls % 7, self.polls)])
            self.advance_watermark(float(self.polls))
            _set(self.shared, LAST, now)
            return True
        if not self.wait:
            return False
        if self.deadline is None:
            self.deadline = now + 10.0
        if any(_get(self.shared, 4 + k) >= self.count for k in range(1, KERNELS)):
            _set(self.shared, SEEN_IN_TIME, 1.0)
            return False
        return now < self.deadline


class CountWatermarks(Operator):
    def on_batch(self, port, batch):
        pass

    def on_watermark(self, watermark):
        index = self.context.index
        _set(self.shared, index, _get(self.shared, index) + 1)
        if watermark != float("inf"):
            _set(self.shared, 4 + index, max(watermark, _get(self.shared, 4 + index)))


def _run(count: int, wait: bool) -> mmap.mmap:
    shared = mmap.mmap(-1, 16 * 8)  # MAP_SHARED: the forked kernels write here

    def counter():
        op = CountWatermarks()
        op.shared = shared
        return op

    flow = Dataflow("ticks")
    (flow.source(lambda: Ticks(shared, count, wait), name="ticks")
         .key_by(lambda r: r[0])
         .apply(counter, name="count watermarks"))
    run(flow, cores=KERNELS)
    return shared


def test_the_interval_grows_with_the_kernels_past_two():
    assert progress_interval(1) == progress_interval(2) == 0
    assert progress_interval(3) == pytest.approx(0.001)
    assert progress_interval(16) == pytest.approx(0.014)


def test_other_kernels_see_at_most_a_watermark_an_interval():
    count = 3000
    shared = _run(count, wait=False)
    try:
        seen = [int(_get(shared, k)) for k in range(KERNELS)]
        highest = [_get(shared, 4 + k) for k in range(KERNELS)]
        elapsed = _get(shared, LAST) - _get(shared, FIRST)
    finally:
        shared.close()
    # kernel 0 sees its own as they come (a few merge in its consumer's inbox)
    assert seen[0] > count / 2, seen
    allowed = elapsed / progress_interval(KERNELS) + 3  # the first, the end, one held at the end
    for k in range(1, KERNELS):
        assert 2 <= seen[k] <= allowed, (k, seen, elapsed)
        assert 1 <= highest[k] <= count, highest
    assert max(seen[1:]) < seen[0] / 4, seen


def test_the_last_watermark_comes_without_anything_after_it():
    """The source stops moving its watermark but does not end: the held
    watermark must still reach the other kernels (a timer sends it), or it
    would wait for the end of input, which here waits for it (10 s)."""
    shared = _run(2, wait=True)
    try:
        seen_in_time = _get(shared, SEEN_IN_TIME)
        waited = _get(shared, LAST)
    finally:
        shared.close()
    assert seen_in_time == 1.0, waited
