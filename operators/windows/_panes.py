"""The partial half of a sliding window combiner, by slices.

A sliding window of `m` steps (`Sliding(10.0, 2.0)`: m = 5) holds each
event `m` times. Pre-aggregated by window, an event costs its kernel `m`
accumulator updates, and a key seen in one step makes a partial for each
of the `m` windows holding that step. So the partial half keeps *slices*
instead, the tumbling windows of one step, `[p * step, (p + 1) * step)`:
one update an event, one partial `(key, p + 0.5, acc)` a key and slice,
sent once this kernel's watermark passes the slice's end, and the owner
(`AlignedWindows.merge_partials`) merges it into each of the slice's `m`
windows, `p - m + 1 .. p` (a slice lies in exactly those). NEXMark q5
(bids counted per auction, 10 s sliding by 2 s), a kernel of two: 0.13
slice partials an event against 0.64 window partials, which were too many
to pay (the half passed its events on unaggregated instead,
`_pass_on.py`).

The number goes as `p + 0.5`, a float, so that the owner tells a slice's
partials from a window's (`j`, an int) by the number alone, and msgpack
carries both exactly. Floats hold `p + 0.5` exactly only while `|p| <
2**52` (`_EXACT`): beyond (times of 2**52 steps and more: microseconds taken
for seconds with a step of 0.25 s), `2**52 + 1.5` would round to `2**52 + 2`
and the owner merge the slice into the next one's windows, so such events
go window by window, as those behind a slice's end do.

Late events keep their meaning: an event whose slice has ended here (some
of its windows were emitted, by this kernel's watermark) goes window by
window into those still open, as a window's partial, just as without
slices. Slices are not keyed state: the partial half hands every partial
on before each epoch marker (`flush_partials`), so a snapshot holds none.
"""

from __future__ import annotations

from ._aligned import SlidingWindows, TumblingWindows

_EXACT = 2**52  # slice numbers p with |p| below it are exact as p + 0.5


class SlidingPanes(SlidingWindows):
    """`SlidingWindows` for a combiner's partial half whose size is a whole
    number (at least 2) of steps: events into slices (`_Slices`), and
    those whose slice has ended here into their open windows."""

    __slots__ = ("slices",)

    def __init__(self, operator, size: float, step: float) -> None:
        super().__init__(operator, size, step)
        self.slices = _Slices(operator, step, self._kind())

    def add(self, port, batch, stamps, frontier, late):
        behind: list = []  # (its slice ended here: `_Slices` takes it for late)
        self.slices.add(port, batch, stamps, frontier, behind)
        if behind:
            records, times = self._behind(batch, stamps, frontier)
            super().add(port, records, times, frontier, late)

    def add_columns(self, port, keys: list, values: list, stamps, frontier, late) -> None:
        behind: list = []
        self.slices.add_columns(port, keys, values, stamps, frontier, behind)
        if behind:
            records, times = self._behind(list(zip(keys, values)), stamps, frontier)
            super().add_columns(port, [r[0] for r in records], [r[1] for r in records], times, frontier,
                                late)

    def _behind(self, records: list, stamps, frontier: float) -> tuple[list, list]:
        """The records (and their stamps) whose slice ended at or before
        `frontier`, or whose slice number is too large to send (`_EXACT`),
        as `_Slices` decided: seldom any (events behind this kernel's
        watermark), so they are picked out again, not carried."""
        step, last = self.step, self.last
        picked = [(record, stamp) for record, stamp in zip(records, stamps)
                  if (p := last(stamp)) >= _EXACT or p <= -_EXACT or (p + 1) * step <= frontier]
        return [record for record, _ in picked], [stamp for _, stamp in picked]

    def fire(self, frontier: float, limit: int | None = None) -> bool:
        self.slices.fire(frontier)
        return super().fire(frontier, limit)

    def count_created(self) -> None:
        super().count_created()
        self.slices.count_created()

    def created(self) -> int:
        return super().created() + self.slices.created()

    def open_windows(self) -> int:
        return super().open_windows() + self.slices.open_windows()


class _Slices(TumblingWindows):
    """Tumbling windows of one step, in a plain dict (not keyed state: see
    the module), each emitted as the partials of slice `p`, numbered
    `p + 0.5`."""

    __slots__ = ("_spec",)

    def __init__(self, operator, step: float, spec: str) -> None:
        # (not AlignedWindows.__init__: it registers the keyed state "windows")
        self.size = self.step = step
        self.span = 1
        self.opened = {}
        self.numbers = []
        self.touched = None
        self._new, self._grow, self._adds = operator._new, operator._grow, operator._adds
        self._user_error = operator._user_error
        emit_window = operator._emit_window
        self._emit_window = lambda p, accs: emit_window(p + 0.5, accs)
        self._spec = spec

    def _kind(self) -> str:
        return self._spec  # the user's window, not the slices

    def _enter(self, stamp: float, frontier: float) -> tuple[int, dict | None]:
        p = self.last(stamp)
        if p >= _EXACT or p <= -_EXACT:
            return p, None  # no exact `p + 0.5`: window by window (`SlidingPanes._behind`)
        return super()._enter(stamp, frontier)
