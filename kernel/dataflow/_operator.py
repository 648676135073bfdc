"""The mid-level operator protocol.

Every built-in operator in `operators/` is written against these two classes,
and users write their own the same way. An operator is a plain object with
synchronous handlers; the kernel calls them inside its ticks:

* ``on_batch(port, batch)``: a batch (a plain ``list``) arrived on input
  ``port``. Treat it as read-only: the same list may be handed to several
  downstream operators. Call ``self.emit(out)`` with a new list. Records go
  on only through ``emit``: a handler that returns anything but None (its
  output, ``return out``) fails the run, naming it, rather than lose them
  (``on_end`` may return a future: below).
* ``on_watermark(watermark)``: the minimum watermark over all inputs advanced.
  It is called after every batch that arrived before the watermark, and the
  kernel forwards the watermark downstream after the handler returns, so
  anything emitted here is ahead of it.
* ``on_end()``: every input has ended (after a final ``on_watermark(inf)``).
  Aggregates emit their results here; end-of-input is forwarded after it.
  An operator with work still under way in a task of its own (a sink whose
  writes are not all acknowledged) returns an ``asyncio`` future (its
  task): the step ends once it is done, so until then epoch snapshots
  still take its state (what it has not written) rather than count it as
  ended.
* ``on_timer(event_time, data)``: an event-time timer set with
  ``self.schedule(event_time, data)`` is due: the input watermark reached
  ``event_time``. Due timers fire in time order (ties in the order they were
  set), just before ``on_watermark`` for that watermark; all that are left
  fire when the input ends (the watermark goes to +inf), and so do those
  set meanwhile: a timer that sets the next one (a periodic timer) stops
  once ``self.current_watermark()`` is +inf, or it never ends.
* ``on_idle()``: every input is idle (see "Idle sources" in the README):
  downstream will stop waiting for this operator's watermark, so emit here
  what an operator further on needs before it moves on without you (the
  windowed combiner's partial half sends its partials). Called before the
  idle signal is forwarded.
* ``on_round(round)``: inside a loop (``Stream.iterate``), round ``round``
  of the innermost loop around the operator is complete: every input has
  delivered all of that round's records, on every kernel's side. It is
  called once per round, in order, before the round's end is passed on, so
  anything emitted here belongs to the same round (the keyed aggregates
  emit their per-round results here). The operator object, and its state,
  lives on from round to round and from run to run.
* ``open(context)``: called once on the kernel, before any data. ``context``
  has ``index``, ``peers``, ``watermark``, ``epoch``, ``clock``, ``logger``.
  What it emits (a source's watermark too) goes on once every step is open
  and restored, in order, before anything else; not again in a run resumed
  from a snapshot, whose restored state holds it already (what ``restore``
  emits goes on then, as open's does).
* ``result()``: a picklable value handed back to the caller after the run
  (``collect`` returns its items this way). Default: None.
* ``on_epoch(epoch) -> snapshot`` and ``restore(snapshot)``: the operator's
  part of an epoch snapshot, and putting it back in a resumed run. The
  defaults cover every keyed state made with ``state.value_state(self, ...)``,
  ``map_state`` or ``list_state`` in ``open``.
* ``rescale(snapshots, owns) -> snapshot``: a run resumed on another number
  of kernels. ``snapshots[k]`` is what ``on_epoch`` returned on kernel ``k``
  of the run that wrote them (``Operator.ENDED`` where the step had ended
  there); return this kernel's snapshot, to be handed to ``restore``, keeping
  the keys ``owns(key)`` says are this kernel's (whole key groups move
  between kernels). The default merges the keyed states (and refuses the
  same key on two old kernels: state not partitioned by key); an operator
  that overrides ``on_epoch`` overrides ``rescale`` too, or such a resume is
  refused with an error naming it.

A ``Source`` has no inputs; the kernel calls ``poll()`` whenever it is
activated. ``poll`` emits zero or more batches and returns ``True`` to be
polled again in a later tick, ``False`` once it is exhausted, or ``None`` to
sleep until something calls ``self.wake()`` (an I/O task that filled a
buffer, say).

Event time: a batch from a source with ``timestamp=`` is a ``TimedBatch``, a
``list`` with a parallel list ``timestamps`` (float seconds). An operator that
keeps records one for one can pass the timestamps on with
``TimedBatch(out, batch.timestamps)``; one that emits a plain list drops them.

Helpers the kernel installs on every operator instance: ``emit(batch)``,
``wake()``, ``schedule(event_time, data=None)`` (an event-time timer),
``advance_watermark(wm)`` and ``mark_idle()`` (sources: move the output
watermark; say that no data is coming for now), ``pause_input(paused)``
(an operator whose work goes on in a task of its own, a sink writing to
a broker say, and whose buffer is full: ``pause_input(True)`` pauses this
kernel's sources and stops it reading what other kernels send, whose own
sources then pause as their rings fill; ``pause_input(False)`` once the
buffer has drained; memory stays bounded), ``name`` and ``context``.
For processing-time timers use ``context.kernel.call_later(delay, fn)``: it
runs on the kernel's clock (a ``VirtualClock`` in tests).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

from kernel.dataflow._errors import KernelError
from kernel.net._channel import TimedBatch
from kernel.scheduling._scheduler import THROUGHPUT

__all__ = ["DEFAULT_BATCH_SIZE", "Operator", "Source", "TimedBatch"]

#: records per batch that sources produce unless told otherwise
DEFAULT_BATCH_SIZE = 1024


class _NoneKey:
    """A timer's data where `schedule(t, None)` gave the key None: a timer
    without data is stored as None (its kernel's, given to every kernel on
    a rescale), so the key None needs another mark. One object through a
    pickle (snapshots)."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "NONE_KEY"

    def __repr__(self) -> str:
        return "NONE_KEY"


NONE_KEY = _NoneKey()


class Operator:
    """Base class of mid-level operators (see the module docstring).

    Example, an operator that numbers its records::

        class Numbered(Operator):
            def open(self, context):
                self.n = 0
            def on_batch(self, port, batch):
                start = self.n
                self.n += len(batch)
                self.emit(list(enumerate(batch, start)))

        numbered = stream.apply(Numbered, name="numbered")
    """

    #: "throughput" (default) or "latency": which task class runs this operator.
    task_class: str = THROUGHPUT
    #: the step name, set by the kernel when the operator is instantiated.
    name: str = "operator"
    context = None
    #: set by apply() on the operators it makes: the runtime checks that
    #: their emit is given a batch (a built-in's always is)
    _emit_checked: bool = False

    def open(self, context) -> None:
        """Called once before any data, with the kernel's context."""

    def on_batch(self, port: int, batch: list) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define on_batch(port, batch)")

    def on_watermark(self, watermark: float) -> None:
        """The input watermark advanced to `watermark`."""

    def on_end(self):
        """Every input ended; emit final results here. Return None, or a
        future (an asyncio task) that the step's end waits for."""

    def on_idle(self) -> None:
        """Every input is idle: emit what others must not move on without."""

    def on_round(self, round: int) -> None:
        """Inside a loop: round `round` is complete on every input (of every
        kernel); emit what belongs to it before its end is passed on."""

    def on_timer(self, event_time: float, data) -> None:
        """An event-time timer set with `schedule(event_time, data)` is due."""
        raise NotImplementedError(f"{type(self).__name__} set a timer but defines no on_timer()")

    def result(self):
        """A picklable value gathered back to the caller after the run."""
        return None

    def fuse_upstream(self, upstream: Operator):
        """Operator fusion (optional): `upstream`'s only output is this
        operator, on this kernel, in the same activation (a chained edge).
        Return a handler `on_batch(port, batch)` that does `upstream`'s work
        and this operator's in one pass over `upstream`'s input, to take the
        place of `upstream.on_batch` (this operator's own `on_batch` then
        never sees a batch), or None to stay apart (the default). The
        handler must give the results the two steps would, and the same
        errors, each naming the step whose function failed and its record.
        Progress (watermarks, end of input) still reaches this operator
        through `upstream` as before."""
        return None

    # -- keyed state ----------------------------------------------------------------
    # The registry `state.value_state(self, name)` and friends put their
    # states in: anything with a `name`, `snapshot()` and `restore(data)`.
    # Epoch snapshots take what is registered here (`on_epoch`), a resumed
    # run puts it back (`restore`).

    def register_state(self, state):
        """Register a keyed state under `state.name` (unique per operator);
        returns it. Called by `state.value_state`, `map_state`, `list_state`."""
        states = self.__dict__.setdefault("_states", {})
        if state.name in states:
            raise ValueError(f"{self.name}: a state named {state.name!r} exists")
        states[state.name] = state
        return state

    @property
    def keyed_states(self) -> dict:
        """The states registered on this operator, by name (read them, don't
        add to them: use `register_state`)."""
        return self.__dict__.get("_states", {})

    def on_epoch(self, epoch: int):
        """A picklable snapshot of this operator as of epoch marker `epoch`
        (every input has delivered it, and nothing after it). The default
        takes every keyed state created with `state.value_state(self, ...)`
        and friends (a state that tracks its writes, only the keys written
        since the last epoch: `state/_keyed.py`); override it (and
        `restore`) to add fields of your own."""
        states = self.keyed_states
        if not states:
            return None
        return {name: getattr(state, "epoch_snapshot", state.snapshot)() for name, state in states.items()}

    #: what `rescale` is given for a kernel where the step had ended
    ENDED = "ended"

    def rescale(self, snapshots: list, owns):
        """This kernel's snapshot, cut from every old kernel's (`snapshots`,
        `ENDED` where the step had ended there) for a run resumed on another
        number of kernels: the keys `owns(key)` is true for. The default
        merges the keyed states made with `state.value_state(self, ...)` and
        friends; an operator whose `on_epoch` keeps more says how to cut it."""
        if type(self).on_epoch is not Operator.on_epoch:
            raise KernelError(
                f"{self.name}: its snapshot cannot be moved to another number of kernels (it overrides "
                "on_epoch but not rescale(snapshots, owns)): resume it on as many kernels as the run "
                "that wrote the state_dir, or give the operator a rescale method")
        return merge_keyed_states(snapshots, owns)

    def on_commit(self, epoch: int) -> None:
        """Epoch `epoch` is complete on every kernel (every later epoch too,
        at the end of a run): output held back for it may be published."""

    def restore(self, snapshot) -> None:
        """Put back what `on_epoch` returned (called after `open`, before any
        data, when a run resumes from a snapshot)."""
        if snapshot is None:
            return
        states = self.keyed_states
        for name, data in snapshot.items():
            if name not in states:
                raise KeyError(f"{self.name}: the snapshot has a state {name!r} this operator did not create")
            states[name].restore(data)

    # Installed per instance by the kernel when the operator is wired; these
    # placeholders only explain a misuse.
    def emit(self, batch: list) -> None:
        raise RuntimeError(f"{self.name}: emit() called before the operator was wired into a run")

    def wake(self) -> None:
        raise RuntimeError(f"{self.name}: wake() called before the operator was wired into a run")

    def advance_watermark(self, watermark: float) -> None:
        raise RuntimeError(f"{self.name}: advance_watermark() called before the operator was wired")

    def schedule(self, event_time: float, data=None) -> None:  # (the instance's, once wired)
        raise RuntimeError(f"{self.name}: schedule() called before the operator was wired into a run")

    def mark_idle(self) -> None:
        raise RuntimeError(f"{self.name}: mark_idle() called before the operator was wired into a run")

    def current_watermark(self) -> float:
        """The input watermark this operator has reached (a source: its own
        output watermark), already the new one inside `on_timer` and
        `on_watermark`; +inf once every input has ended."""
        raise RuntimeError(f"{self.name}: current_watermark() called before the operator was wired")

    def pause_input(self, paused: bool = True) -> None:
        raise RuntimeError(f"{self.name}: pause_input() called before the operator was wired into a run")


class Source(Operator):
    """Base class of mid-level sources: override `poll()`.

    Before each poll the kernel sets `records_wanted`: how many records it
    would like this poll to emit, so that the poll and the operators chained
    after it fit in what is left of the kernel's budget (it learns what a
    record costs from the polls before). The built-in sources emit at most
    that many (and at most their `batch_size`; `subscribe` hands on a batch
    as its publisher sent it); yours may read it too. A
    list of more than LARGE_OUTPUT records, and more than was wanted, goes
    on in pieces (PIECE records an activation of the source), with what
    the source emits, says or ends after it waiting behind, and the source
    is not polled meanwhile.
    """

    #: records the kernel would like the next poll to emit (set before each poll)
    records_wanted: int = DEFAULT_BATCH_SIZE

    def poll(self) -> bool | None:
        raise NotImplementedError(f"{type(self).__name__} must define poll()")

    def on_batch(self, port: int, batch: list) -> None:  # pragma: no cover - sources have no inputs
        raise RuntimeError(f"source {self.name} has no inputs")


# An output of more than LARGE_OUTPUT records in one handler (a window
# closing for 300,000 keys, an aggregate's results for a million at the end
# of input: 0.1-0.2 s in one activation; a user's operator's one emit,
# kernel/runtime/_user_pieces.py) is made and handed on in pieces of PIECE
# records, one a tick (`Unfinished`), so that the kernel still hands the
# loop back within its budget. Below it, at once.
PIECE = 1024
LARGE_OUTPUT = 4 * PIECE


def record_bytes(records: list) -> int:
    """A cheap estimate of the bytes of one of `records` (not empty): the
    largest of three (first, middle, last), a tuple's or a list's first 8
    items included (sys.getsizeof alone counts only their pointers). Never
    a look at every record of a batch."""
    size = 1
    for record in (records[0], records[len(records) // 2], records[-1]):
        try:
            bytes_ = sys.getsizeof(record, 64)
            if record.__class__ is tuple or record.__class__ is list:
                for item in record[:8]:
                    bytes_ += sys.getsizeof(item, 64)
        except Exception:  # a user's __sizeof__ that raises: a guess
            bytes_ = 64
        size = max(size, bytes_)
    return size


class Unfinished:
    """What a built-in handler returns, in place of None, once it has handed
    on the first piece of its output and more is to come (a flat_map whose
    function made millions of records from one; on_watermark or on_end of a
    window or an aggregate with results for many keys): the kernel calls
    `step()` in later ticks, one piece (or part: `PieceSize`) a tick, so that it still hands the
    loop back within its budget, and keeps what came after the batch
    (batches, watermarks, epoch markers, the end of input) or what follows
    the handler (the watermark going on, the step's end) behind it, so
    that nothing overtakes a record still to come (`Instance._park`). Only
    the kernel's own operators return one (and the runtime, for a user's
    operator's large emit: kernel/runtime/_user_pieces.py); a user's
    handler returns None. `handler` names the handler that made it, for
    an error met while a later piece goes on (`Instance.park_then`)."""

    __slots__ = ("fit", "handler", "next_piece", "pieces", "sink")

    def __init__(self, pieces: Iterator[list], sink: Callable[[list], object], next_piece: list,
                 fit: Callable[[float, float, float, bool], None] | None = None) -> None:
        self.pieces = pieces  # the pieces after `next_piece`, read as they are needed
        self.sink = sink  # what hands a piece on (the step's emit)
        self.next_piece = next_piece
        self.handler = "on_batch"
        # told what a step took (`FlatMap.fit`: its pieces sized by what they cost); None: not timed
        self.fit = fit

    def step(self, monotonic: Callable[[], float] | None = None, seconds: float = 0.0,
             sizing: PieceSize | None = None) -> bool:
        """Hands on the next piece; whether more are to come. Given the
        kernel's clock, a piece is to take at most `seconds`: with a `fit`
        (a flat_map's, whose pieces it makes by what they cost) it is told
        what handing the piece on took (through the steps chained after),
        what making the next took (through the steps fused after), and
        whether a next one was made; else a plain list or `TimedBatch` goes
        on in parts of `sizing.size` records, which `sizing` fits to what
        they cost (an aggregate's results at the end of input, a map of
        30 us a record after it: 1,024 records held the loop 30 ms)."""
        fit = self.fit
        if monotonic is None or (fit is None and (sizing is None or sizing.per_batch)):
            self.sink(self.next_piece)
            self.next_piece = piece = next(self.pieces, None)
            return piece is not None
        if fit is not None:
            started = monotonic()
            self.sink(self.next_piece)
            handed = monotonic()
            self.next_piece = piece = next(self.pieces, None)
            fit(handed - started, monotonic() - handed, seconds, piece is not None)
            return piece is not None
        piece = self.next_piece
        kind = piece.__class__
        rest = None
        size = sizing.size
        if size < PIECE and size < len(piece) and (kind is list or kind is TimedBatch):  # (PIECE: whole)
            if kind is TimedBatch:
                stamps = piece.timestamps
                piece, rest = TimedBatch(piece[:size], stamps[:size]), TimedBatch(piece[size:], stamps[size:])
            else:
                piece, rest = piece[:size], piece[size:]
        started = monotonic()
        self.sink(piece)
        sizing.fit(len(piece), monotonic() - started, seconds)
        if rest:
            self.next_piece = rest
            return True
        self.next_piece = piece = next(self.pieces, None)
        return piece is not None


class PieceSize:
    """How many records a piece of an output handed on in pieces is to
    hold, by what the pieces handed on cost (the steps after them
    included), so that one takes no more than the time given (a quarter
    of the budget). Pieces stay whole (size PIECE: as many records as a
    piece holds, more than PIECE where its maker overshot, a hot key's
    pairs; cut at PIECE, each was two activations) till two in a row took more
    than the whole budget (once could be the machine's hiccup: a test's
    pieces of a few records split by it); from then on, as many records
    as fit at the cost a record measured last, at most twice as many as
    before, till they are whole again. Where twice in a row a piece of
    half the records or fewer than the one before it took half as long
    or more (a sink that flushes each batch), the cost is per piece, and
    pieces stay whole from then on."""

    __slots__ = ("as_much", "over", "per_batch", "size", "slow")

    def __init__(self) -> None:
        self.size = PIECE
        self.over: tuple[int, float] | None = None  # (records, seconds) of the last piece over its time
        self.as_much = 0  # pieces in a row over their time that cost as much with half the records or fewer
        self.per_batch = False
        self.slow = 0  # pieces in a row that took more than the budget

    def fit(self, count: int, took: float, seconds: float) -> None:
        """A piece of `count` records took `took` seconds; one is to take at most `seconds`."""
        if self.per_batch or count < 1:
            return
        self.slow = self.slow + 1 if took > 4 * seconds else 0
        if self.size >= PIECE and self.slow < 2:
            return
        over = self.over
        if took > seconds and count > 1:
            if over is not None and count <= over[0] // 2:  # fewer records: did they cost less?
                if took >= over[1] / 2:
                    self.as_much += 1
                    if self.as_much >= 2:
                        self.per_batch, self.size = True, PIECE
                        return
                else:
                    self.as_much = 0
                self.over = (count, took)
            elif over is None or count > over[0]:  # (one as large: made before the last was told)
                self.over = (count, took)
        else:
            self.over, self.as_much = None, 0
        cost = took / count
        fitting = int(seconds / cost + 1e-6) if cost > 0.0 else PIECE  # (not 249.99999 records: 249)
        self.size = max(1, min(PIECE, fitting, 2 * self.size))


def unfinished(pieces: Iterator[list], sink: Callable[[list], object],
               fit: Callable[[float, float, float, bool], None] | None = None) -> Unfinished | None:
    """What a handler that handed on the first piece of its output returns:
    None if `pieces` has no more, else the `Unfinished` that hands them to
    `sink` in later ticks (`fit`: see `Unfinished`)."""
    piece = next(pieces, None)
    return None if piece is None else Unfinished(pieces, sink, piece, fit)


def merge_keyed_states(snapshots: list, owns, nested=()) -> dict | None:
    """The default snapshots (`{state name: {key: value}}`) of every old
    kernel merged into one, keeping the keys `owns(key)` is true for. The
    states named in `nested` are kept by something else first (a window's
    number): `{outer: {key: value}}` or `{outer: {(key, value), ...}}`,
    cut inside and merged by `outer`."""
    merged: dict = {}
    for kernel, snapshot in enumerate(snapshots):
        if snapshot is None or snapshot == Operator.ENDED:
            continue
        for name, entries in snapshot.items():
            mine = merged.setdefault(name, {})
            if name in nested:
                for outer, inner in entries.items():
                    if isinstance(inner, dict):
                        kept = {key: value for key, value in inner.items() if owns(key)}
                        if kept:
                            _merge_apart(mine.setdefault(outer, {}), kept, name, snapshots[:kernel])
                    else:
                        kept = {pair for pair in inner if owns(pair[0])}
                        if kept:
                            mine.setdefault(outer, set()).update(kept)
                continue
            _merge_apart(mine, {key: value for key, value in entries.items() if owns(key)}, name,
                         snapshots[:kernel])
    return merged or None


def _merge_apart(merged: dict, kept: dict, name: str, earlier: list) -> None:
    """`merged.update(kept)`, where no key may be in both: a key is on one
    kernel, its owner's. The same key on two old kernels is state that was
    not partitioned by key (an operator of a stream without key_by): which
    kernel's value would win is arbitrary, and the others' would be lost."""
    before = len(merged)
    merged.update(kept)
    if len(merged) != before + len(kept):
        where = [k for k, s in enumerate(earlier) if isinstance(s, dict) and _holds(s.get(name), kept)]
        key = next(key for key in kept if any(_holds(earlier[k].get(name), {key: None}) for k in where))
        raise ValueError(
            f"keyed state {name!r} has the key {repr(key)[:40]} on kernels {where[0]} and {len(earlier)} of "
            "the run that wrote the state_dir: not partitioned by key (a stream without key_by?), so it "
            "cannot move to another number of kernels; resume on as many kernels as wrote it")


def _holds(entries, keys: dict) -> bool:
    """Whether a state's snapshot (maybe nested by a window's number) has any of `keys`."""
    if not isinstance(entries, dict):
        return False
    if any(key in entries for key in keys):
        return True
    return any(isinstance(inner, dict) and any(key in inner for key in keys) for inner in entries.values())


def rescale_fields(snapshots: list, owns, first: bool, nested=(), **how) -> dict | None:
    """Cut a snapshot dict of named fields (the built-in keyed operators':
    `{"states": ..., "frontier": ..., "late": ...}`) by `how[field]`:
    `"states"` keyed states cut by owner, `"min"`/`"max"` over the old
    kernels, `"sum_first"` summed onto the first kernel (a count reported
    once). Old kernels where the step had ended are passed over."""
    live = [s for s in snapshots if s is not None and s != Operator.ENDED]
    if not live:
        return None
    out = {}
    for field, rule in how.items():
        values = [s[field] for s in live]
        if rule == "states":
            out[field] = merge_keyed_states(values, owns, nested)
        elif rule == "min":
            out[field] = min(values)
        elif rule == "max":
            out[field] = max(values)
        elif rule == "sum_first":
            out[field] = sum(values) if first else 0
        else:
            raise ValueError(f"no rescale rule {rule!r}")
    return out
