"""An operator instance on one kernel: its inbox, its activation, its progress.

Each graph node becomes an `Instance`: the operator object, its inbox (a list
of `(channel, payload)` in arrival order) and its activation. Upstream
operators deliver into the inbox and mark the instance ready; the instance's
activation drains the inbox through the operator's handlers.

Progress is in-band. A channel's payload is a data batch (a `list`, or a
`TimedBatch` list with event timestamps), a watermark (a `float`), `IDLE`,
an `EpochMarker` or `END`. Because they share one ordered inbox, a watermark
is seen after exactly the data that preceded it. The instance's input
frontier over its channels is kept by a `Frontier` (`_progress.py`: the
rules, as pure data); the instance enacts what it changes: when the frontier
advances, due event-time timers fire (`on_timer`), then `on_watermark` runs,
and the new frontier is forwarded downstream; when every open input is idle,
`on_idle` runs and the instance says IDLE downstream; when every channel has
ended, `on_end` runs and `END` is forwarded.

Epoch markers align (`_channel_epoch`): once the marker of an epoch has come
on every open input, the instance takes its snapshot and forwards the
marker; what arrives on a channel behind its marker meanwhile is held back,
then handled in order (Chandy-Lamport's aligned snapshots, as Flink's).

The budget (the kernel hands the loop back every `budget` seconds) holds
for an activation and the chain it runs, in these ways:

* a source sizes its batches from what its polls cost (`_Pace`): the
  runtime tells it how many records it wants (`records_wanted`) so that a
  poll, the chained operators after it included, fits in what is left of
  the slice's budget;
* a chained edge whose batch finds the budget spent hands it to the
  operator's inbox for a later tick instead of calling it (and everything
  on that edge then goes through the inbox behind it, in order);
* a source whose chain has work handed on waiting is not polled until it
  is done, so it cannot outrun it;
* a source whose poll would not fit in the last quarter of a slice
  declines it (`LATER`): it runs first in the next slice, so the kernel
  neither overruns its deadline with a poll started late nor leaves a
  second source only the slice's leftovers;
* a handler whose output for one batch is large (a flat_map making
  millions of records from one) hands on its first piece and returns the
  rest (`Unfinished`), which goes on a piece a tick (`_park`); so do an
  on_watermark and an on_end whose output is large (a window closing for
  300,000 keys, an aggregate's results for a million at the end), and
  what follows them (the watermark going on, the end of input, the step's
  end) waits behind the pieces (`_Then`). A step fused into one whose output
  goes on so waits too (`_behind_fused`): its handler does that one's
  work on records directly, which would overtake the pieces. A source
  that emits a large list (a user's, ignoring `records_wanted`) hands it
  on in pieces in its own activations, what it does meanwhile behind
  them (`_source_large`).

* an activation whose inbox still holds batches when the budget runs out
  (a loop's head hands a whole round on at once) leaves them for later
  ticks (`_defer`).

An inbox holds what one tick delivered, and the exchange's backpressure
counts on activations draining it (its reader delivers every tick; inboxes
drained only in part would grow unbounded). So while the rest of a batch's
output goes on in pieces, or an inbox is left in part, the kernel holds
its input (its sources pause, the reader reads nothing): nothing piles up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import math
from collections.abc import Collection, Mapping
from functools import partial

from kernel.dataflow import IDLE, EpochMarker, RoundMarker, TimedBatch
from kernel.dataflow._errors import (
    PASSES_THROUGH,
    OperatorError,
    describe_function,
    describe_record,
)
from kernel.dataflow._graph import Node
from kernel.dataflow._operator import NONE_KEY, PIECE, Operator, PieceSize, Unfinished, record_bytes
from kernel.scheduling._scheduler import LATER

from . import _blocked_step, _user_pieces
from ._progress import Frontier
from ._user_pieces import UserOutput

_NO_DATA = object()  # schedule(t): no data given


def _is_batch(batch) -> bool:
    """Whether a source's emit was given a batch (a sized collection of
    records): a str, bytes or a dict iterate as characters, ints or keys,
    so one record emitted alone would silently become several; None, a
    number or a generator have no len()."""
    return isinstance(batch, Collection) and not isinstance(batch, (str, bytes, bytearray, Mapping))

def _emitted_after_end(instance, batch) -> None:
    """A source emitted after its poll returned False (a task of its own):
    the records went on after the end of its input (or, behind the pieces
    of a large emit, were dropped with them after it)."""
    raise RuntimeError(f"{instance.name}: emit() after the end of its input: its poll returned False, "
                       f"and {len(batch)} record(s) more would come after the end (a source that "
                       f"waits for more returns None from poll, and is polled again when woken)")


def _not_a_batch(batch):
    kind = type(batch).__name__
    raise TypeError(f"emit() takes a batch, a list of records, but was given {_article(kind)} "
                    f"{kind}: {describe_record(batch)} (one record: emit([record]))")


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _batch_checked(emit):
    def checked(batch):
        if not isinstance(batch, list) and not _is_batch(batch):  # one check a batch, not a record
            _not_a_batch(batch)
        emit(batch)

    return checked


END = "<end of input>"  # a str: never a list, never a float
_INF = math.inf
_INBOX_LEFT = "an inbox left in part"  # with its instance, the holder of its kernel's input (_defer)
# A step that sends afar waits for room with at most this much in its inbox
# (estimated: `Instance._inbox_small`); past it, it takes its next batch anyway
INBOX_BYTES = 8 << 20


def _bytes(batch: list) -> int:
    """A batch's bytes, estimated (`record_bytes`)."""
    return len(batch) * record_bytes(batch) if batch else 0


class _Then:
    """In an inbox, behind an on_watermark's or on_end's output that goes on
    in pieces (`Instance._progress`): what follows it, run once the last
    piece has gone on (the watermark forwarded, the end of input handled,
    the step ended). `rest(pending, at)` returns whether it parked more."""

    __slots__ = ("rest",)

    def __init__(self, rest) -> None:
        self.rest = rest


# A chained hop reads the clock (~0.1 us) before a batch of at least this
# many records: well under 1% of what handling them costs anywhere, while a
# one-record hop (the activation-latency path) stays a plain call.
CHECK_CLOCK_AT = 64


class Instance:
    __slots__ = (
        "_monotonic",
        "_piece_seconds",
        "_piece_size",
        "_ready",
        "aligning",
        "arrived",
        "budget_spent",
        "busy",
        "chain",
        "chained",
        "counting",
        "declined",
        "deferring",
        "drain_waiters",
        "drained",
        "emitted",
        "end_due",
        "ended",
        "fed_from_afar",
        "feed_at",
        "feeds",
        "finishing",
        "fused_into",
        "fused_last",
        "held",
        "idle",
        "inbox",
        "index",
        "is_source",
        "loop",
        "name",
        "op",
        "output_watermark",
        "pace",
        "pending",
        "poll_due",
        "polling",
        "ports",
        "progress",
        "records_in",
        "records_out",
        "released",
        "rest_part",
        "rest_pieces",
        "runtime",
        "scheduled",
        "sends_afar",
        "source_rest",
        "source_sink",
        "targets",
        "task_class",
        "timers",
        "user_output",
    )

    def __init__(self, node: Node, op: Operator, runtime) -> None:
        self.name = node.label
        self.op = op
        self.runtime = runtime
        self.task_class = op.task_class
        self.is_source = node.is_source
        self.pending: list = []
        self.scheduled = False
        # an inbox left in part when the budget ran out (activate): the
        # holder of the kernel's input meanwhile (`_defer`), or None
        self.deferring: tuple | None = None
        self.ports: list[int] = []  # each input channel's port
        self.progress = Frontier()  # the input frontier over those channels
        self.output_watermark = -_INF  # a source's: what it has promised downstream
        self.idle = False  # a source that said IDLE downstream
        self.timers: list = []  # heap of (event time, sequence, data) for on_timer
        self.index = -1  # position in the runtime's instances
        self.loop = None  # inside loops: how it takes their round markers (_loops.Membership)
        # epoch alignment: the channels that delivered the marker of epoch
        # `aligning` (None: not aligning), what came behind it on them, and
        # what to handle next once the alignment is done
        self.aligning: int | None = None
        self.arrived: set | None = None
        self.held: list = []
        self.released: list | None = None
        self.ended = False
        self.end_due = False  # on_end's future is done: end in the next activation
        self.targets: list[tuple[Instance, int]] = []
        self.chained = False  # runs inside its upstream's activation (see Runtime)
        self.chain: list[Instance] = []  # a source's: the instances its polls run (chained)
        self.drain_waiters: list[Instance] = []  # sources to wake once the inbox is empty
        # a source's: the instances on its way to a loop's entry with
        # max_in_flight, that entry too, upstream first
        # (`Runtime._feeding_faucets`); the one its last poll's records may
        # still be in; the last to wake it having drained its inbox
        self.feeds: list[Instance] = []
        self.feed_at = 0
        self.drained: Instance | None = None
        self.declined = False  # a source's: its last activation declined the rest of a slice
        self.emitted = 0  # a source's: records emitted by the poll under way
        # a source's large emit going on in pieces (`_source_large`): what
        # waits behind its first piece, in order (the rest of it, later
        # emits, progress and epochs as calls), those read as pieces, the
        # emit underneath, and whether a poll is due once they have gone on
        self.source_rest: list | None = None
        self.rest_pieces = None
        self.rest_part = None  # the rest of a piece of them handed on in part (`_hand_on_part`)
        self.source_sink = None
        self.poll_due = False
        self.polling = False  # a source's: within its poll
        self.finishing = False  # a source's: its end waits behind the pieces of a large emit
        # metrics (`count_records`): records handed to on_batch and emitted,
        # counted per batch, and only when a run serves metrics
        self.counting = False
        self.records_in = self.records_out = 0
        self.busy = 0.0  # seconds in this operator's on_batch, less the steps it called (metrics)
        self.fused_into: Instance | None = None  # the operator whose handler now does ours too
        self.fused_last: Instance | None = None  # the end of that fusion (`fused_end`, once fused)
        self.user_output: UserOutput | None = None  # a user's operator's: its large emits in pieces
        self.fed_from_afar = False  # what other kernels send may reach its inbox (Runtime's)
        # fed from afar, and its output reaches other kernels: it takes a
        # batch only while the transport has room (Runtime's `_mark_sending_afar`)
        self.sends_afar = False
        # while it waits so with batches: (batches counted from the inbox's
        # head, their bytes: `_inbox_small`); None otherwise
        self.inbox: tuple[int, int] | None = None
        kernel = runtime.kernel
        self.pace = _Pace(kernel) if node.is_source else None
        self.budget_spent = kernel.budget_spent
        # what a piece of an output handed on in pieces is to take, through
        # the steps after it (`Unfinished.step`, `FlatMap.fit`): a quarter
        # of the budget; and the pieces' size by what they cost (this
        # step's outputs, one after the other: an aggregate's, a window's)
        self._monotonic = kernel.clock.monotonic
        self._piece_seconds = kernel.budget / 4
        self._piece_size = PieceSize()
        self._ready = kernel.ready_function(self.task_class)

    def current_watermark(self) -> float:
        """The operator's `current_watermark()`: its frontier, which the
        progress moves before timers fire (an operator's periodic timer
        reads +inf there once its input has ended, and stops)."""
        return self.frontier

    @property
    def frontier(self) -> float:
        """What this instance has promised downstream: its input frontier,
        or a source's output watermark."""
        return self.output_watermark if self.is_source else self.progress.value

    # -- wiring -------------------------------------------------------------

    def add_channel(self, port: int) -> int:
        self.ports.append(port)
        return self.progress.add_channel()

    def install_helpers(self) -> None:
        """Give the operator its emit/wake/advance_watermark."""
        op = self.op
        op.wake = self.wake
        op.advance_watermark = self.advance_watermark
        op.mark_idle = self.mark_idle
        op.schedule = self.schedule
        op.pause_input = self.pause_input
        op.current_watermark = self.current_watermark
        self.fused_last = self.fused_end()  # (fusion is decided before the helpers are given)
        op.emit = self._emit_function()
        if self.counting:
            op.emit = self._counting_out(op.emit)
        if self.is_source:
            op.emit = self._counted(op.emit)
            op.wake = self._source_wake
            self.chain = self._chained_after()
        elif self.user_output is not None:
            # A user's operator (apply()) that emits one record alone, a str
            # or a dict, had it split into characters or keys downstream,
            # silently; a generator failed as "has no len()". The built-in
            # operators, which always emit lists, skip this check. Checked
            # at the emit call (behind a large emit, it was refused only
            # when it went on, in a later tick: the handler could not
            # catch it).
            op.emit = _batch_checked(self.user_output.emitter(op.emit))

    def user_output_in_pieces(self) -> None:
        """A user's operator (apply()): a large emit in its handlers goes
        on in pieces, as a built-in step's output does (`_user_pieces`).
        Called before anything takes its on_batch (a chained upstream's
        emit, metrics' counting)."""
        if not self.is_source and getattr(self.op, "_emit_checked", False):
            self.user_output = UserOutput()
            self.user_output.install(self.op)

    def count_records(self) -> None:
        """Count records in and out, per batch (for metrics): wraps the
        operator's on_batch here, and its emit in `install_helpers`, so a
        run without metrics pays nothing. Called before any upstream takes
        its on_batch for a chained edge.

        A fused upstream's handler (`Runtime._fuse`) does the downstream
        operator's work too, so the records between them never exist as a
        batch: they are counted as the records the fused handler was given
        (one to one: a run that counts fuses no step that filters).

        It also times each on_batch (two clock reads a batch): `busy` is the
        time in it less the time of the downstream on_batch calls it made
        (a chained step runs inside its upstream's emit). `nested` (the
        runtime's, one cell for every instance of the kernel) carries the
        time of those inner calls out to the one that made them. A fused
        handler's time is all its first step's."""
        self.counting = True
        if self.is_source:
            return
        op = self.op
        on_batch = op.on_batch
        fused = self.fused_into
        clock = self.runtime.kernel.clock.monotonic
        nested = self.runtime.nested_time

        def timed(port, batch):
            outer = nested[0]
            nested[0] = 0.0
            started = clock()
            try:
                rest = on_batch(port, batch)
            finally:
                spent = clock() - started
                self.busy += spent - nested[0]
                nested[0] = outer + spent
            if rest.__class__ is Unfinished:  # its later pieces: the time making them is ours too
                rest.pieces = self._timed_pieces(rest.pieces, clock)
            return rest

        if fused is None:
            def counted_batch(port, batch):
                self.records_in += len(batch)
                return timed(port, batch)
        else:
            # every step the handler does hands on what it was given, but
            # at most one (a filter, a flat_map: `Runtime._fuse`): the steps
            # before it see the batch's records, those after it what the
            # handler handed on
            steps = [self]
            while steps[-1].fused_into is not None:
                steps.append(steps[-1].fused_into)
            at = getattr(on_batch, "changes_counts_at", None)
            if at is None or at < 0:
                passing, last = steps[:-1], steps[-1]

                def counted_batch(port, batch):
                    n = len(batch)
                    for step in passing:
                        step.records_in += n
                        step.records_out += n
                    last.records_in += n
                    return timed(port, batch)
            else:
                before, changing, after, last = steps[:at], steps[at], steps[at + 1:-1], steps[-1]
                handler = on_batch

                def handed_on(handed):
                    changing.records_out += handed
                    for step in after:
                        step.records_in += handed
                        step.records_out += handed
                    last.records_in += handed

                def counted_batch(port, batch):
                    n = len(batch)
                    for step in before:
                        step.records_in += n
                        step.records_out += n
                    rest = timed(port, batch)
                    changing.records_in += n
                    if changing is last:
                        return rest  # its out is counted where it emits
                    handed_on(handler.handed_on)
                    if rest.__class__ is Unfinished:  # the pieces it hands on later count as they go
                        rest.sink = _counting(rest.sink, handed_on)
                    return rest

        op.on_batch = counted_batch

    def _timed_pieces(self, pieces, clock):
        """`pieces` (of an `Unfinished`), the time each takes to make added
        to this operator's busy time (metrics)."""
        while True:
            started = clock()
            piece = next(pieces, None)
            self.busy += clock() - started
            if piece is None:
                return
            yield piece

    def _counting_out(self, emit):
        def counted_out(batch):
            self.records_out += len(batch)
            emit(batch)

        return counted_out

    def _counted(self, emit):
        """A source's emit, counting the records each poll hands on (its
        pace). A plain list (or a `TimedBatch`, cut with its stamps) of
        more than LARGE_OUTPUT records, and more than the poll was asked for
        (a user's source that ignores `records_wanted`, or `subscribe`
        handing on a publisher's batch), goes on in pieces (`_source_large`);
        the other built-in sources emit at most what is wanted, and pay two
        comparisons an emit."""
        self.source_sink = emit

        def counted(batch):
            if not isinstance(batch, list) and not _is_batch(batch):  # one check a poll, not a record
                _not_a_batch(batch)
            if self.source_rest is not None:
                if self.finishing:  # its end waits behind the pieces: this would be dropped after it
                    _emitted_after_end(self, batch)
                self.source_rest.append(batch)  # behind the pieces of an earlier emit: order kept
                return
            if self.ended:
                _emitted_after_end(self, batch)
            n = len(batch)
            if (n > _user_pieces.LARGE_OUTPUT and n > self.op.records_wanted
                    and (batch.__class__ is list or batch.__class__ is TimedBatch)):
                batch = self._source_large(batch)
                n = len(batch)
            self.emitted += n
            emit(batch)

        return counted

    def _source_large(self, batch: list) -> list:
        """A source emitted a large list (a million records in one poll held
        the host's loop for the whole of it downstream): its first PIECE
        goes on now, the rest a PIECE an activation of the source
        (`_hand_on_rest`), as a user operator's large emit does
        (`_user_pieces`), with what the source does meanwhile (emits,
        watermarks, idleness, the end of its input, epoch markers:
        `_behind_rest`) behind it, in order. The source is not polled till
        they have gone on; then only if a poll was due (it returned True,
        or was woken)."""
        self.source_rest = rest = [batch]
        self.rest_pieces = _user_pieces.source_pieces(rest)
        # In its poll, a source is scheduled only if woken there (what it
        # returns says more); emitted by a task of its own, a poll may be
        # due and the source not scheduled (paused, or waiting for its
        # chain): one poll more at worst, rather than one lost (a hang)
        self.poll_due = self.scheduled or not self.polling
        self.wake()
        return _user_pieces.first_piece(batch)

    def _hand_on_part(self, sink, piece: list) -> None:
        """Hands on `piece` of a source's large emit, or as much of it as
        fits in a quarter of the budget at what the steps after cost a
        record (`PieceSize`, as `Unfinished.step` does: a map of 30 us a
        record after a source that emitted 20,000 records held the loop 30
        ms a piece), the rest of it first in the next activation."""
        sizing = self._piece_size
        size = sizing.size
        kind = piece.__class__
        # (size PIECE: whole, however many records the piece holds, as when untimed)
        if size < min(PIECE, len(piece)) and not sizing.per_batch and (kind is list or kind is TimedBatch):
            if kind is TimedBatch:
                stamps = piece.timestamps
                piece, self.rest_part = (TimedBatch(piece[:size], stamps[:size]),
                                         TimedBatch(piece[size:], stamps[size:]))
            else:
                piece, self.rest_part = piece[:size], piece[size:]
        monotonic = self._monotonic
        started = monotonic()
        sink(piece)
        sizing.fit(len(piece), monotonic() - started, self._piece_seconds)
        self.wake()  # the next piece in a later tick

    def _behind_rest(self, call) -> None:
        """`call` (progress going on: a watermark, IDLE, an epoch marker;
        the source's end) once what the source emitted before has gone on."""
        self.source_rest.append(call)

    def _hand_on_rest(self) -> None:
        """A source's activation while a large emit goes on in pieces: the
        next piece, and what waited behind the one before it."""
        sink = self.source_sink
        part = self.rest_part
        if part is not None:
            self.rest_part = None
            self._hand_on_part(sink, part)
            return
        for item in self.rest_pieces:
            if item.__class__ is partial:
                item()
                if self.ended:  # its end went on: nothing after it does
                    break
            else:
                self._hand_on_part(sink, item)
                return
        self.source_rest = self.rest_pieces = None
        if self.poll_due and not self.ended:
            self.wake()

    def _source_wake(self) -> None:
        """A source's `wake()`: while a large emit of it goes on in pieces,
        a poll is due once they have."""
        if self.source_rest is not None:
            self.poll_due = True
        self.wake()

    def chained_names(self) -> list[str]:
        """The names of the steps that run inside this one's activation
        (for the stall notice and the watchdog: `scheduling.described`)."""
        return [member.name for member in self._chained_after()]

    def blocked_step(self, frames: list) -> tuple[str, str] | None:
        """The step and function the loop's thread is in, blocked in this
        activation (`frames`: its frames, innermost first), and the step's
        name, for the watchdog's report (`_blocked_step`); None: this
        activation's name alone."""
        return _blocked_step.blocked_step(frames, f"the activation of {self.name}", self.name)

    def _chained_after(self) -> list[Instance]:
        """The instances that run inside this instance's activation: the
        chain of single forward edges after it."""
        chain, at = [], self
        while len(at.targets) == 1 and getattr(at.targets[0][0], "chained", False):
            at = at.targets[0][0]
            chain.append(at)
        return chain

    def _emit_function(self):
        targets = self.targets
        if not targets:
            return _discard
        if len(targets) > 1:

            def emit(batch, targets=targets):
                if batch:
                    for target, channel in targets:
                        target.deliver(channel, batch)

            return emit
        (target, channel), = targets
        if not isinstance(target, Instance):  # an exchange's sending end
            deliver = target.deliver

            def emit(batch, deliver=deliver, channel=channel):
                if batch:
                    deliver(channel, batch)

            return emit
        if target.chained:
            return target.chained_emit(channel)
        ready = target._ready

        # `deliver` inlined: the one-downstream case is most edges, and a
        # call less per hop is ~10% of activation latency
        # (benches/latency.py section 3).
        def emit(batch, target=target, channel=channel, ready=ready):
            if batch:
                target.pending.append((channel, batch))
                if not target.scheduled:
                    target.scheduled = True
                    ready(target)

        return emit

    # -- the activation -----------------------------------------------------

    def pause_input(self, paused: bool = True) -> None:
        self.runtime.hold_input(self, paused)

    def wake(self) -> None:
        if not self.scheduled and not self.ended:
            self.scheduled = True
            self._ready(self)

    def deliver(self, channel: int, payload) -> None:
        self.pending.append((channel, payload))
        if not self.scheduled:
            self.scheduled = True
            self._ready(self)

    def _end_due(self, future) -> None:
        # The work on_end handed back failed: the step's failure, as if
        # on_end had raised it. Its error was dropped: the step ended as if
        # the work had been done, and the run succeeded ("Task exception
        # was never retrieved" on stderr at best).
        error = None if future.cancelled() else future.exception()
        if error is not None:
            if not isinstance(error, PASSES_THROUGH):
                error = OperatorError.wrap(self.name, _handler_name(self.op, "on_end"), error,
                                           has_record=False)  # (the work's error its __cause__)
            self.runtime.kernel.fail(error)
            return
        self.end_due = True
        if not self.scheduled:
            self.scheduled = True
            self._ready(self)

    def activate(self):
        self.scheduled = False
        if self.is_source:
            return self._poll()
        if self.end_due:
            self.end_due = False
            self._finish()
            return
        fused = self.fused_last
        if fused is not None and fused.pending:
            self._behind_fused(fused)
            return
        if (self.inbox is not None and self.runtime._transport_blocked and self.pending
                and isinstance(self.pending[0][1], list) and self._inbox_small(self.pending, 0)):
            # still waiting for room with a batch first (woken by a batch
            # come meanwhile, or by room that filled again since): nothing
            # taken, nothing copied, and the kernel's reading not held
            self._wait_for_room(None, 0, ())
            return
        pending = self.pending
        self.pending = []
        on_batch = self.op.on_batch
        ports = self.ports
        runtime = self.runtime if self.sends_afar else None
        payload = None
        i = 0
        try:
            while i < len(pending):
                channel, payload = pending[i]
                i += 1
                if self.arrived is not None and channel in self.arrived:
                    self.held.append((channel, payload))  # behind an epoch marker: wait
                elif isinstance(payload, list):
                    if runtime is not None:  # (a check a batch, here only)
                        if not runtime._transport_blocked:
                            self.inbox = None
                        elif self._inbox_small(pending, i - 1):
                            self._wait_for_room(None, channel, pending[i - 1:])
                            return
                        else:  # its inbox is full: it takes this batch anyway
                            counted, size = self.inbox
                            self.inbox = (max(0, counted - 1), max(0, size - _bytes(payload)))
                    returned = on_batch(ports[channel], payload)
                    if returned is not None:  # one check a batch: more to come, or a user's mistake
                        self._park(self._unfinished(returned), channel, pending[i:])
                        return
                    if i < len(pending) and self.budget_spent():  # the rest in a later tick
                        self._defer(pending[i:])
                        return
                elif payload.__class__ is Unfinished:
                    if self.runtime._transport_blocked and (self.sends_afar or not self.fed_from_afar):
                        self._wait_for_room(payload, channel, pending[i:])  # (a check a piece)
                        return
                    if payload.step(self._monotonic, self._piece_seconds, self._piece_size):  # more: later
                        self._park(payload, channel, pending[i:], again=True)
                        return
                    self.runtime.hold_input(payload, False, pacing=True)
                else:
                    if payload.__class__ is _Then:  # what followed a handler's last piece
                        if payload.rest(pending, i):
                            return
                    elif self._progress(channel, payload, pending, i):
                        return  # a handler's output goes on in pieces, the rest behind it
                    if self.released:  # an alignment finished: what it held comes next
                        pending[i:i] = self.released
                        self.released = None
                    if fused is not None and fused.pending and i < len(pending):
                        self.pending = [*pending[i:], *self.pending]
                        self._behind_fused(fused)
                        return
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._handler_error(payload, exc) from exc
        if self.deferring is not None:
            hold, self.deferring = self.deferring, None
            self.runtime.hold_input(hold, False, pacing=True)
        if self.drain_waiters and not self.pending:
            self.wake_drain_waiters()

    def _defer(self, rest: list) -> None:
        """The budget ran out with batches still in the inbox (a loop's
        round handed on at once): they go on in later ticks, ahead of what
        comes meanwhile, and the kernel holds its input till they are done
        (`hold_input`) so that the inbox does not grow behind them. It
        holds the input as a holder of its own: the instance itself is the
        operator's (`pause_input`: an asynchronous sink whose buffer is
        full), whose hold must outlive this one, and this one that."""
        self.pending = [*rest, *self.pending]
        if self.deferring is None:
            self.deferring = (self, _INBOX_LEFT)
            self.runtime.hold_input(self.deferring, True, pacing=True)
        if not self.scheduled:
            self.scheduled = True
            self._ready(self)

    def _wait_for_room(self, unfinished: Unfinished | None, channel: int, behind) -> None:
        """The transport is backed up: the rest of an output waits, in
        order, till it has room (`Runtime.wait_for_room`); with no
        `unfinished`, the batches of a step that sends afar (`behind`, the
        first of them the one it was about to take). An inbox left in part
        no longer holds the kernel's reading either: its rest waits behind
        this."""
        if unfinished is None:
            if behind:  # (none: it was waiting already, with its inbox as it is)
                self.pending = [*behind, *self.pending]
        else:
            self.pending = [(channel, unfinished), *behind, *self.pending]
        if self.deferring is not None:
            hold, self.deferring = self.deferring, None
            self.runtime.hold_input(hold, False, pacing=True)
        self.runtime.wait_for_room(self, unfinished)

    def _inbox_small(self, pending: list, at: int) -> bool:
        """Whether what waits in this step's inbox (`pending[at:]`) is under
        INBOX_BYTES, estimated by a sample of each batch's records: then
        the step waits for room (`_wait_for_room`). Past it, it takes its
        next batch anyway, its output going on into the transport's
        overflow: a step whose input is larger than its output (a map
        before a count's partials, taking 10 KB records from another
        kernel) held every record the others sent it while it waited.
        Each batch is sized once while it waits (`inbox` counts them from
        the inbox's head; while it waits, nothing is taken from the head,
        and what comes goes on at the end)."""
        counted, size = self.inbox or (0, 0)
        scan = at + counted
        end = len(pending)
        while scan < end and size <= INBOX_BYTES:
            payload = pending[scan][1]
            if isinstance(payload, list):
                size += _bytes(payload)
            scan += 1
        self.inbox = (scan - at, size)
        return size <= INBOX_BYTES

    def fused_end(self) -> Instance | None:
        """The last step of the fusion this one's handler starts (key_by,
        map_values, then a window: the window), or None if not fused."""
        fused = self.fused_into
        while fused is not None and fused.fused_into is not None:
            fused = fused.fused_into
        return fused

    def _behind_fused(self, fused: Instance) -> None:
        """The step this one is fused into hands an output on in pieces
        (its on_watermark's): this one's handler does that step's work on
        records directly, so what waits here waits for the pieces, then
        goes on in order (`wake_drain_waiters` wakes this step). An inbox
        left in part here lets go of the kernel's reading meanwhile, as in
        `_wait_for_room`: the fused step holds it while its pieces go on,
        and lets go of it while they wait for room (kept here, two kernels
        whose partials waited so each waited for the other to read)."""
        if self.deferring is not None:
            hold, self.deferring = self.deferring, None
            self.runtime.hold_input(hold, False, pacing=True)
        if self not in fused.drain_waiters:
            fused.drain_waiters.append(self)

    def _unfinished(self, returned) -> Unfinished:
        """What on_batch returned: the rest of a built-in step's output, or
        a user's handler returning its records (lost: an error)."""
        if returned.__class__ is not Unfinished:
            raise _returned(self, "on_batch", returned)
        return returned

    def _park(self, unfinished: Unfinished, channel: int, behind, again: bool = False) -> None:
        """The rest of a batch's output goes on in later ticks, a piece a
        tick, ahead of whatever came after that batch (`behind`, then what
        came while this activation ran): no batch, watermark, epoch marker
        or end of input overtakes a record still to come. Till the last
        piece, this kernel's sources pause and what other kernels send is
        not read (`hold_input`, held by `unfinished` itself: the operator may
        hold input of its own): it would only pile up behind."""
        self.pending = [(channel, unfinished), *behind, *self.pending]
        if not again:
            self.runtime.hold_input(unfinished, True, pacing=True)
        if not self.scheduled:
            self.scheduled = True
            self._ready(self)

    def park_then(self, unfinished: Unfinished, channel: int, rest, pending, at: int, handler: str) -> bool:
        """`handler`'s output goes on in pieces (`_park`), then `rest(pending,
        at)` (what followed the handler: `_Then`), then `pending[at:]`, in
        later ticks. Returns True: the activation stops here."""
        unfinished.handler = handler  # what an error in a later piece names (`_handler_error`)
        self._park(unfinished, channel, [(channel, _Then(rest)), *pending[at:]])
        return True

    def wake_drain_waiters(self) -> None:
        """Sources held back until their chain (or their way to a loop's
        entry with max_in_flight) caught up: the inbox here is empty."""
        waiters, self.drain_waiters = self.drain_waiters, []
        for waiter in waiters:
            waiter.drained = self
            waiter.wake()

    def _progress(self, channel: int, payload, pending: list = (), at: int = 0) -> bool:
        """A watermark, IDLE, an epoch marker or END arrived on `channel`
        (from the inbox, or on a chained edge). Returns True when
        on_watermark (or on_end) handed its output on in part
        (`Unfinished`): the rest of it, then the rest of this, then
        `pending[at:]` (what came after, in an activation) go on in later
        ticks."""
        progress = self.progress
        if payload.__class__ is EpochMarker:
            self._channel_epoch(channel, payload.epoch)
            return False
        if payload.__class__ is RoundMarker:  # inside a loop (_loops.py)
            return self.loop.marker(self, payload, channel, pending, at)
        if payload is END:
            ended = channel not in progress.closed
            change = progress.observe_end(channel)
            if ended:
                self._channel_ended(channel)
        elif payload is IDLE:
            change = progress.observe_idle(channel)
        else:
            change = progress.observe_watermark(channel, payload)
        if change is not None:
            if change.reactivated is not None:  # downstream counts this instance again
                self._forward(change.reactivated)
            if change.advanced is not None:
                self._fire_timers(change.advanced)
                returned = _call(self, "on_watermark", change.advanced)
                if returned is not None:  # one check a watermark: more to come, or a user's mistake
                    if returned.__class__ is not Unfinished:
                        raise _returned(self, "on_watermark", returned)
                    return self.park_then(returned, channel, partial(self._after_watermark, channel, payload,
                                                                     change), pending, at, "on_watermark")
        return self._after_watermark(channel, payload, change, pending, at)

    def _channel_ended(self, channel: int) -> None:
        """An operator that asks (`_port_ended`, a join) is told once every
        channel of a port has ended: its values from the other port can
        meet nothing more."""
        # (looked up on the class: an operator's own __getattr__, a proxy's,
        # would answer for any name)
        told = getattr(type(self.op), "_port_ended", None)
        if told is not None:
            port, closed = self.ports[channel], self.progress.closed
            if all(c in closed for c, p in enumerate(self.ports) if p == port):
                told(self.op, port)

    def _after_watermark(self, channel: int, payload, change, pending: list = (), at: int = 0) -> bool:
        """The rest of `_progress`, once on_watermark's output has gone on."""
        progress = self.progress
        if change is not None:
            if change.advanced is not None:
                if change.advanced == _INF:
                    # timers set in on_watermark(inf) fire before +inf goes
                    # on: after it, a window downstream took their records
                    # as late
                    self._fire_timers(_INF)
                self._forward(change.advanced)
            if change.all_idle:
                # What the operator holds for others to complete (a
                # combiner's partials) goes out before they are told to
                # stop waiting for it.
                _call_emitting(self, "on_idle")
                if change.went_idle:
                    self._forward(IDLE)
        if payload is END:
            # An ended input has nothing more to deliver: that may complete
            # an alignment. After the frontier moved: the END came before
            # the marker on this channel, so what it released belongs to
            # this epoch, and the snapshot holds the frontier it reached
            # (the held channels' marks are still those from before their
            # marker).
            if self.arrived is not None and progress.open:
                self._check_aligned()
            if progress.open == 0:
                # Every timer is due at the end of input, also those set
                # after the last watermark reached +inf (in on_batch after
                # it; those of on_watermark(inf) fired above): no later
                # advance would fire them.
                self._fire_timers(_INF)
                draining = _call(self, "on_end")
                if draining is None:
                    self._finish()
                elif draining.__class__ is Unfinished:  # a built-in step's large final output
                    return self.park_then(draining, channel, lambda pending, at: self._finish(), pending, at,
                                          "on_end")
                elif hasattr(draining, "add_done_callback"):
                    # work of its own still under way (a sink's writes): end once it is done
                    _on_the_loop(draining, self.runtime.kernel.loop).add_done_callback(self._end_due)
                else:  # otherwise a bare AttributeError, blamed on whichever handler was running
                    raise _returned(self, "on_end", draining, "None, or a future (an asyncio task) that the "
                                    "step's end waits for")
        return False

    def _fire_timers(self, frontier: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= frontier:  # due event-time timers, in order
            when, _, data = heapq.heappop(timers)
            _call_emitting(self, "on_timer", when, None if data is NONE_KEY else data)

    # -- epochs ---------------------------------------------------------------------

    def _channel_epoch(self, channel: int, epoch: int) -> None:
        if self.arrived is None:
            self.arrived = set()
            self.aligning = epoch
        self.arrived.add(channel)
        self._check_aligned()

    def _check_aligned(self) -> None:
        if self.arrived is None or len(self.arrived) < self.progress.open:
            return
        epoch = self.aligning
        self.arrived = self.aligning = None
        self.runtime.snapshot(self, epoch)
        self._forward(EpochMarker(epoch))
        if self.held:
            self.released, self.held = self.held, []

    def snapshot_part(self, operator_snapshot) -> tuple:
        """This instance's part of its kernel's snapshot."""
        frontier, marks, closed = self.progress.snapshot()
        if self.is_source:
            frontier = self.output_watermark
        return frontier, marks, closed, list(self.timers), operator_snapshot

    def restore_part(self, part: tuple):
        """Put back what `snapshot_part` made; returns the operator's snapshot."""
        frontier, marks, closed, timers, operator_snapshot = part
        if self.is_source:
            self.output_watermark = frontier
        else:
            self.progress.restore(frontier, marks, closed)
        # the sequence numbers are the crashed process's: number them
        # again, in their order, from this process's counter
        self.timers[:] = [(when, _next_sequence(), data) for when, _, data in sorted(
            timers, key=lambda timer: timer[:2])]
        return operator_snapshot

    def _handler_error(self, payload, exc: Exception) -> OperatorError:
        if payload.__class__ is Unfinished:  # a later piece: of the output of the handler that made it
            handler = payload.handler
        else:
            handler = "on_batch" if isinstance(payload, list) else "on_watermark"
        return OperatorError.wrap(self.name, _handler_name(self.op, handler), exc, has_record=False)

    # -- chaining -------------------------------------------------------------
    # An operator whose only input comes from an upstream whose only output
    # is this operator (a forward edge, same task class) is *chained*: the
    # upstream's emit calls its handlers directly, inside the upstream's
    # activation, as Flink chains operators on forward edges; a hop costs a
    # function call instead of a run-queue round trip (benches/latency.py
    # section 3). The chain runs as one activation for the stall detector
    # (which names its head), but not past the budget: a batch that finds
    # the budget spent goes to the operator's inbox instead, and so does
    # everything on the edge after it while the inbox holds anything, so
    # data and progress keep their order.

    def chained_emit(self, channel: int):
        on_batch = self.op.on_batch
        port = self.ports[channel]
        handler_error = self._handler_error
        spent = self.budget_spent
        deliver = self.deliver
        target = self
        fused = self.fused_end()  # (fusion is decided before the emits are made)

        def emit(batch):
            if batch:
                if (target.pending or (len(batch) >= CHECK_CLOCK_AT and spent())
                        or (fused is not None and fused.pending)):
                    deliver(channel, batch)  # behind what waits, or the budget is spent
                    return
                try:
                    returned = on_batch(port, batch)
                except PASSES_THROUGH:
                    raise
                except BaseException as exc:
                    raise handler_error(batch, exc) from exc
                if returned is not None:  # one check a batch: more to come, or a user's mistake
                    target._park(target._unfinished(returned), channel, ())

        return emit

    def receive(self, channel: int, payload) -> None:
        """Handle one payload now (progress on a chained edge)."""
        try:
            self._progress(channel, payload)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._handler_error(payload, exc) from exc

    def _poll(self) -> None:
        if self.ended:
            return
        if self.runtime.paused:
            self.runtime.park_source(self)
            return
        for member in self.chain:
            if member.pending:  # work this source's chain handed to a later tick
                member.drain_waiters.append(self)
                return
        if self.feeds and self._feeding():
            return
        if self.source_rest is not None:  # its last large emit goes on in pieces: no poll meanwhile
            self._hand_on_rest()
            return
        op, pace = self.op, self.pace
        monotonic = pace.monotonic
        started = monotonic()
        wanted = pace.hint(started)
        if not wanted:
            if not self.declined:  # the poll would not fit in what is left: first in the next slice
                self.declined = True
                self.scheduled = True
                return LATER
            # Declined once already, and again with no room: the slices
            # never leave it any (other work runs first in each, or the
            # budget is tiny). Declining on would starve it for good; it
            # goes on a record at a time instead.
            wanted = 1
        self.declined = False
        op.records_wanted = wanted
        self.emitted = 0  # counted by the source's emit
        self.polling = True
        try:
            more = op.poll()
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            handler = _handler_name(self.op, "poll")
            raise OperatorError.wrap(self.name, handler, exc, has_record=False) from exc
        finally:
            self.polling = False
        if more.__class__ is not bool and more is not None:  # one check a poll
            # its records, returned rather than emitted: lost, and a list
            # that is not empty is true ("poll again"), so it was polled on;
            # a 0 (a count of what is left) was taken as None, and the
            # source slept until a wake() that nothing sent
            raise _returned(self, "poll", more, "True, False or None")
        elapsed = monotonic() - started
        if self.emitted:
            # A poll whose chain handed work on measured only part of its cost.
            pace.learn(elapsed, self.emitted, not any(member.pending for member in self.chain))
        if self.source_rest is not None:  # a large emit goes on in pieces: what the poll said, behind them
            if more:
                self.poll_due = True
            elif more is False:
                self.advance_watermark(_INF)
                self.finishing = True
                self._behind_rest(partial(self._finish))
            return
        if more:
            self.wake()
        elif more is False:
            self.advance_watermark(_INF)
            self._finish()

    def _feeding(self) -> bool:
        """(max_in_flight) Is what the last poll emitted still on its way
        to the loop's entry? Polling again before the entry has counted it,
        and paused the sources if that filled it, would let more in. The
        way is walked upstream first, waiting for each step whose inbox
        holds anything to empty it once: records only move downstream, so
        none of the poll's are behind the step reached, and records that
        come after (other kernels', through an exchange) hold it up at no
        step more than once."""
        feeds, at = self.feeds, self.feed_at
        while at < len(feeds):
            member = feeds[at]
            if member.pending and self.drained is not member:
                self.feed_at = at
                if self not in member.drain_waiters:
                    member.drain_waiters.append(self)
                return True
            self.drained = None
            at += 1
        self.feed_at = 0
        return False

    # -- a source's output progress -------------------------------------------

    def schedule(self, event_time: float, data=_NO_DATA) -> None:
        """An event-time timer: `on_timer(event_time, data)` once the input
        watermark reaches `event_time` (timers fire in time order, ties in
        the order they were scheduled).

        A time that is not a number, or NaN (which compares below nothing:
        it stayed at the top of the heap, and no timer of the step ever
        fired), is refused. Without data the timer is its kernel's (a
        rescaled run gives one to every kernel); `data=None` given is the
        key None's, kept as `NONE_KEY` (timers without data are stored as
        None, as in earlier snapshots)."""
        if event_time.__class__ is not float or event_time != event_time:
            _check_timer_time(self.name, event_time)
        if data is _NO_DATA:
            data = None
        elif data is None:
            data = NONE_KEY
        heapq.heappush(self.timers, (event_time, _next_sequence(), data))

    def advance_watermark(self, watermark: float) -> None:
        """A source's output watermark moves forward (never back)."""
        forward = self._forward if self.source_rest is None else self._forward_behind_rest
        if self.idle:
            self.idle = False
            forward(self.output_watermark)  # active again
        if watermark > self.output_watermark:
            self.output_watermark = watermark
            forward(watermark)
            self.runtime.source_watermark_moved()

    def mark_idle(self) -> None:
        """A source has had no data for a while: its watermark must not hold
        anyone back until it advances again."""
        if not self.idle and not self.ended:
            self.idle = True
            if self.source_rest is None:
                self._forward(IDLE)
            else:
                self._forward_behind_rest(IDLE)

    def _forward_behind_rest(self, payload) -> None:
        self._behind_rest(partial(self._forward, payload))

    def inject_epoch(self, epoch: int) -> None:
        """Epoch `epoch` starts at this source (`Runtime._next_epoch`): its
        snapshot now, its marker after what it has emitted. Behind a large
        emit still going on in pieces, the marker waits behind them (and
        so before whatever the source emits from now on): the snapshot's
        position, that of every record emitted so far, is that of the
        records before the marker, which every snapshot after it holds.
        (Taken once the pieces had gone on, it held what a task of the
        source's own had emitted meanwhile, behind the marker: lost in a
        resumed run.) A source whose end waits behind pieces takes no part:
        it has ended for this epoch (`_finish` says so)."""
        if self.source_rest is None:
            self.runtime.snapshot(self, epoch)
            self._forward(EpochMarker(epoch))
        elif not self.finishing:
            self.runtime.snapshot(self, epoch)
            self._forward_behind_rest(EpochMarker(epoch))

    def _forward(self, payload) -> None:
        for target, channel in self.targets:
            if target is self.fused_into and not target.pending:
                # Our handler does the target's work on records directly,
                # never through its inbox: progress queued there would be
                # overtaken by the records after it (an epoch's snapshot
                # holding records its source's position does not). Only
                # while it hands an output on in pieces does it go behind
                # them, and records here wait too (`_behind_fused`).
                target.receive(channel, payload)
            elif target.chained and not target.pending and not self.budget_spent():
                target.receive(channel, payload)
            else:  # not chained, behind what its inbox holds, or the budget is spent
                target.deliver(channel, payload)

    def _finish(self) -> None:
        self.ended = True
        self._forward(END)
        self.runtime.instance_ended(self)


_next_sequence = itertools.count().__next__


def _check_timer_time(step: str, event_time) -> None:
    if isinstance(event_time, bool) or not isinstance(event_time, (int, float)) or event_time != event_time:
        raise ValueError(f"{step}: schedule() takes an event time in seconds (an int or a float, not NaN), "
                         f"got {event_time!r}" + (" (a datetime: give .timestamp())"
                                                  if hasattr(event_time, "timestamp") else ""))


class _Pace:
    """How many records a source's next poll should emit.

    A poll runs the chain after the source too, so its cost per record is
    what the whole chain costs. The hint is what fits in the time left of
    the slice (the kernel's deadline): the poll that starts a slice gets the
    whole budget, so batches stay as large as the budget allows (a batch
    has costs of its own: a watermark through the chain, a frame across
    kernels); one that would start in the last quarter of a slice and could
    not take a full batch there is declined (0: `LATER`), so that no poll
    starts too late to end near the deadline, and a second source is not
    left only the leftovers of the first's slices.

    The first poll is asked for FIRST records, and the hint is never more
    than twice the largest batch of the last polls (a start that does not
    trust what a few records measured, and a guard against a wrong
    estimate); on a clock that does not move (a `VirtualClock`) batches
    grow 16, 32, 64...

    The estimate learns from the smaller of the last two polls' costs per
    record: a pause that only inflates the clock (the process preempted, a
    garbage collection, one record that exploded into many) lands in one
    poll and is not taken for the chain's cost, while a chain that really
    got dearer shows in two polls in a row and is taken at once. It falls
    slowly (FALL of the way per poll), so that one cheap moment does not
    make the next batch too large.

    A chain whose cost is per batch (an operator that flushes, sleeps or
    sends per batch) would drive that to one record per poll, each still
    over the budget: when two polls of one record in a row took more than
    the budget and the last poll of several records took less than twice
    as long, smaller batches cannot hold the budget and only cost
    throughput, and the hint goes back up (doubling) to the source's
    batch_size.
    """

    FIRST = 16
    FALL = 0.25

    __slots__ = ("budget", "cost", "kernel", "largest", "last", "monotonic", "per_batch", "several",
                 "single", "single_before")

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.budget = kernel.budget
        self.monotonic = kernel.clock.monotonic
        self.largest = self.FIRST / 2  # the largest batch lately (decaying)
        self.cost = 0.0  # seconds per record; 0: nothing measured (or free)
        self.last = _INF  # the last poll's cost per record
        self.single = self.single_before = 0.0  # the last two one-record polls' seconds
        self.several = _INF  # the last poll of several records: its seconds
        self.per_batch = False  # the chain's cost is per batch, over the budget

    def hint(self, now: float) -> int:
        """Records for a poll that starts at `now`; 0: not in this slice."""
        limit = int(2 * self.largest)
        cost = self.cost
        if cost <= 0.0 or self.per_batch:
            return limit
        left = self.kernel.deadline - now
        fits = left / cost + 1e-9  # (on a virtual clock 0.001 / 0.0001 is 9.99...)
        if fits >= limit:
            return limit
        if left < 0.25 * self.budget:
            return 0
        return max(1, int(fits))

    def learn(self, elapsed: float, emitted: int, whole: bool = True) -> None:
        """A poll emitted `emitted` records in `elapsed` seconds, its chain
        included (`whole`), or up to where the chain handed work on (then
        the cost is at least that: it may only raise the estimate)."""
        self.largest = max(float(emitted), self.largest * 0.9)
        cost = elapsed / emitted
        sample = min(cost, self.last)
        self.last = cost
        estimate = self.cost
        if sample > estimate:
            self.cost = sample
        elif whole:
            self.cost = estimate + (sample - estimate) * self.FALL
        if emitted == 1:
            self.single_before, self.single = self.single, elapsed
        elif emitted >= 4:
            self.several = elapsed
        single = min(self.single, self.single_before)
        self.per_batch = single >= self.budget and self.several < 2 * single


def _call(instance: Instance, handler: str, *args):
    """`instance.op.<handler>(*args)`; a failure names the step and handler."""
    try:
        return getattr(instance.op, handler)(*args)
    except PASSES_THROUGH:
        raise
    except BaseException as exc:
        raise OperatorError.wrap(
            instance.name, _handler_name(instance.op, handler), exc, has_record=False
        ) from exc


def _counting(sink, count):
    """`sink`, calling `count(len(piece))` for each piece it is given."""
    def counted(piece):
        count(len(piece))
        sink(piece)

    return counted


def _call_emitting(instance: Instance, handler: str, *args) -> None:
    """`_call` for a handler that hands records on only through `emit`:
    one that returns them instead would lose them in silence."""
    returned = _call(instance, handler, *args)
    if returned is not None:
        raise _returned(instance, handler, returned)


def _on_the_loop(work, loop):
    """`work` (what on_end handed back) as a future whose callbacks run on
    the kernel's loop. A thread pool's future (`concurrent.futures`) calls
    them in the thread that completes it, and the kernel's scheduling is the
    loop's alone: from there `_ready` queued the step without waking the
    loop (the run hung in its wait). `wrap_future` hands the completion, a
    result or an error, to the loop (call_soon_threadsafe)."""
    if isinstance(work, concurrent.futures.Future):
        return asyncio.wrap_future(work, loop=loop)
    return work


def _returned(instance: Instance, handler: str, value, allowed: str = "None") -> OperatorError:
    """A handler returned `value`, which the kernel does not use (a user's
    operator that returned its output rather than emit it: it was lost)."""
    return OperatorError.wrap(instance.name, _handler_name(instance.op, handler), TypeError(
        f"{handler} returned {describe_record(value)}: it must return {allowed}; records go on "
        "only through self.emit(batch), and what a handler returns is not passed on"), has_record=False)


def _handler_name(op: Operator, method: str) -> str:
    """Names a handler of a user operator in an OperatorError."""
    return f"{describe_function(type(op))}.{method}"


def _discard(batch) -> None:
    pass
