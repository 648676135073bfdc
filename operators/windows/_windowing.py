"""What window aggregates and joins share: timestamps in, windows kept per
key by the window kind's strategy, results emitted as the watermark passes,
late events counted and, with `late=True`, passed on beside the results."""

from __future__ import annotations

import math
from itertools import islice, repeat

from kernel.dataflow._errors import PASSES_THROUGH, KernelError, OperatorError
from kernel.dataflow._operator import Operator, TimedBatch, rescale_fields, unfinished

from .._calls import EMIT_BATCH, LARGE_OUTPUT, PIECE, keyed_error
from ._specs import check_window
from ._strategy import TIME_TOO_LARGE_HINT, TimeTooLarge

# Sessions closed at a time while a watermark's output goes on in pieces:
# closing one costs ~2.5 us (its heap entry, its key's list, its Window),
# so a quarter of a piece's worth fits in the budget (a whole one took
# ~2.5 ms a tick).
SESSIONS = PIECE // 4


class LateBatch(list):
    """Late records, passed on beside a window's results when `late=True`.
    A windowed join's say which side (input port) they came from: `side`
    is 0 (left) or 1 (right) there, None for a window's aggregate."""

    __slots__ = ()
    side: int | None = None


class _LateLeft(LateBatch):
    __slots__ = ()
    side = 0


class _LateRight(LateBatch):
    __slots__ = ()
    side = 1


#: a windowed join's late batches, by the port their values came in on
LATE_BY_SIDE = (_LateLeft, _LateRight)


class SelectBatches(Operator):
    """Passes on a window's result batches (`late=False`) or its late
    records (`late=True`): the two outputs of a window with `late=True`.
    With `side` (0 or 1, a windowed join's), only the late records of that
    side: a join's `late_left` and `late_right`."""

    def __init__(self, late: bool, side: int | None = None) -> None:
        self.late = late
        self.side = side

    def on_batch(self, port, batch):
        late = isinstance(batch, LateBatch)
        if late is self.late and (self.side is None or batch.side == self.side):
            self.emit(list(batch) if late else batch)


class Windowing(Operator):
    """The base of the window operators. A subclass says what goes into a
    window (`_new`, `_grow`, `_merge`, `_adds`) and what a closed one emits
    (`_emit_window`, `_results`): the interface its strategy uses (see
    `_strategy.py`). The strategy is built when the operator opens."""

    #: partial results for a merge downstream (`(key, j, acc)`), not results
    flat = False
    #: what its late records go on in (a windowed join's say their side)
    _late_batch: type[LateBatch] = LateBatch
    #: set at build time: which steps on the path to this window may drop
    #: event time (custom operators), for the error when records come untimed
    time_hint: str | None = None

    def __init__(self, window, late: bool) -> None:
        check_window(window)
        self.window = window
        self.route_late = late
        self.late = 0

    def open(self, context):
        self._frontier = -math.inf  # events of windows that end at or before it are late
        self._out: list = []
        # the event times of `_out`'s results, where `_emit_window` knew
        # them (a window's results, one stamp repeated); else empty
        self._out_stamps: list = []
        self._late_out: list = []
        # windows closed by the watermark under way, whose results are not
        # made yet: `(window, {key: acc})`, and how many results they hold
        # (`_emit_window` of an aggregate's windows by number)
        self._closed: list = []
        self._closed_count = 0
        # The windows live in keyed state (snapshots take them); what orders
        # them is rebuilt from it on restore.
        self._windows = self.window.strategy(self)

    def on_epoch(self, epoch):
        return {"states": super().on_epoch(epoch), "frontier": self._frontier, "late": self.late,
                "sequence": self._windows.sequence()}

    def restore(self, snapshot):
        super().restore(snapshot["states"])
        self._frontier, self.late = snapshot["frontier"], snapshot["late"]
        self._windows.restored(snapshot["sequence"])

    def rescale(self, snapshots, owns):
        # tumbling and sliding windows keep {window number: {key: acc}}
        return rescale_fields(snapshots, owns, self.context.index == 0, nested=("windows",),
                              states="states", frontier="min", late="sum_first", sequence="max")

    def _stamps(self, batch):
        if batch.__class__ is not TimedBatch:
            raise KernelError(
                f"{self.name}: windows need event time, but these records carry no timestamps: "
                "give the source timestamp=... (from_iterable(data, timestamp=fn)), and keep the "
                "path to the window on built-in operators (a custom operator must emit "
                "TimedBatch(out, batch.timestamps) to pass them on)" + (self.time_hint or "")
            )
        return batch.timestamps

    def on_batch(self, port, batch):
        stamps = self._stamps(batch)
        self._windows.add(port, batch, stamps, self._frontier, self._late_out)
        self._flush()

    def on_watermark(self, watermark):
        # Windows closing with more than LARGE_OUTPUT results between them
        # (a window of 300,000 keys: ~100 ms in one activation, with the
        # steps after it) hand them on in pieces, one a tick, the watermark
        # after the last (`_calls.emit_in_pieces`). Windows by number are
        # made piece by piece too (`_closed`), and sessions closed as the
        # pieces go (`fire`'s limit: SESSIONS at first, then as many more
        # with each piece), not all at once.
        self._frontier = watermark
        more = self._fire(watermark)
        if more or len(self._out) + self._closed_count > LARGE_OUTPUT:
            pieces = self._pieces(watermark, more)
            self.emit(next(pieces))
            return unfinished(pieces, self.emit)
        if self._closed:
            self._make_closed(self._closed, self._out, self._out_stamps)
        self._flush()
        return None

    def _fire(self, watermark: float) -> bool:
        """Close what `watermark` closes (sessions: SESSIONS at most);
        whether sessions it closes are left."""
        try:
            return self._windows.fire(watermark, SESSIONS - 1)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._closing_error(exc) from exc

    def _closing_error(self, exc) -> OperatorError:
        return OperatorError.wrap(self.name, self._function(), exc, has_record=False)

    def _pieces(self, watermark: float, more: bool):
        """The results of the windows `watermark` closes, `TimedBatch`es of
        PIECE (a generator: what is left of them is made as pieces are
        wanted): those in `_out`, made whole (joins', sessions'), then, while
        the strategy has `more` to close (sessions), the next it closes,
        then those of `_closed`. Closed windows are out of the keyed state,
        and nothing reaches this step while its pieces go on (a snapshot
        comes after them), so the state holds still meanwhile."""
        out, stamps = self._out, self._out_stamps
        while True:
            if out:
                flat, known = self.flat, len(stamps) == len(out)
                for at in range(0, len(out), PIECE):
                    piece = out[at:at + PIECE]
                    if flat:  # a partial half's `(key, j, acc)`: plain lists, as `_flush` hands them on
                        yield piece
                    else:
                        yield TimedBatch(piece, stamps[at:at + PIECE] if known else self._stamps_of(piece))
                out.clear()
                stamps.clear()
            if self._closed:
                yield from self._closed_pieces()
            if not more:
                return
            more = self._fire(watermark)

    def _closed_pieces(self):
        """`_pieces` of the windows in `_closed`: their results made as
        the pieces are wanted (a hot key's pairs of a join, one by one)."""
        closed, self._closed, self._closed_count = self._closed, [], 0
        piece, piece_stamps = [], []
        flat = self.flat
        for window, accs in closed:
            results = self._results_of(window, accs)
            stamp = None if flat else window.max_timestamp
            while True:
                # the making alone in the try: the yield stays out of it
                # (closing this generator raises GeneratorExit there)
                try:
                    made = list(islice(results, PIECE - len(piece)))
                except PASSES_THROUGH:
                    raise
                except BaseException as exc:
                    raise self._closing_error(exc) from exc
                if not made:
                    break
                piece += made
                piece_stamps += repeat(stamp, len(made))
                if len(piece) >= PIECE:
                    # (a partial half's partials: plain lists, as `_flush` hands them on)
                    yield piece if flat else TimedBatch(piece, piece_stamps)
                    piece, piece_stamps = [], []
        if piece:
            yield piece if flat else TimedBatch(piece, piece_stamps)

    def _make_closed(self, closed: list, out: list, stamps: list) -> None:
        """Every result of `closed` into `out` at once (a small output)."""
        try:
            for window, accs in closed:
                self._make_window(window, accs, out, stamps)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._closing_error(exc) from exc
        closed.clear()
        self._closed_count = 0

    def _close_window(self, window, accs: dict, count: int) -> None:
        """`window` closed with `accs` ({key: acc}), `count` results: made
        once the watermark's whole output is known (`on_watermark`)."""
        self._closed.append((window, accs))
        self._closed_count += count

    def _make_window(self, window, accs: dict, out: list, stamps: list) -> None:
        """The results of `window` closed with `accs`, at once, with their
        event time, into `out` and `stamps` (for a subclass that closes
        windows by `_close_window`)."""
        raise NotImplementedError

    def _results_of(self, window, accs: dict):
        """`_make_window`'s results one by one (an iterator: made as read)."""
        raise NotImplementedError

    @staticmethod
    def _stamps_of(results: list) -> list:
        """The event time of each `(key, window, result)`: its window's
        `max_timestamp`."""
        stamps = []
        last_window = stamp = None
        for record in results:
            window = record[1]
            if window is not last_window:  # a window's results come together
                last_window, stamp = window, window.max_timestamp
            stamps.append(stamp)
        return stamps

    def on_end(self):
        if self.late and not self.route_late:
            self.context.logger.warning(
                "%s: dropped %d late events (behind the watermark for windows already emitted); "
                "window(..., late=True) passes them on instead",
                self.name,
                self.late,
                extra={"step": self.name},
            )

    def _flush(self):
        out = self._out
        if out:
            if self.flat:
                for i in range(0, len(out), EMIT_BATCH):
                    self.emit(out[i:i + EMIT_BATCH])
            else:
                self._emit_timed(out, self._out_stamps)
            out.clear()
            self._out_stamps.clear()
        late = self._late_out
        if late:
            self.late += len(late)
            if self.route_late:
                self.emit(self._late_batch(late))
            self._late_out = []

    def _emit_timed(self, results: list, stamps: list) -> None:
        """Results `(key, window, result)` with event time: each at its
        window's `max_timestamp` (just before its end), so they can be keyed
        and windowed again. `stamps` are theirs when they came with them
        (one per result), else they are worked out here."""
        if len(stamps) != len(results):
            stamps = self._stamps_of(results)
        for i in range(0, len(results), EMIT_BATCH):
            self.emit(TimedBatch(results[i:i + EMIT_BATCH], stamps[i:i + EMIT_BATCH]))

    def result(self):
        return {"late": self.late} if self.late else None

    def _user_error(self, exc, record):
        if isinstance(exc, TimeTooLarge):  # the record's time, not a function, is at fault
            return OperatorError.wrap(self.name, "window", exc, record=record, hint=TIME_TOO_LARGE_HINT)
        return keyed_error(self.name, self._function(), exc, record)  # an unhashable key named as such

    def _function(self):
        return "window"
