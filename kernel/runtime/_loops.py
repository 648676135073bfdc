"""Loops on one kernel: runs, rounds, and when one is complete on every kernel.

A loop (`Stream.iterate`, kernel/dataflow/_loops.py) runs in *runs* of
*rounds*. A run takes in what came from outside up to an outer time; its
round 0 is those records, round r+1 what the feedback carried in round r,
and it ends when a round feeds nothing back on any kernel. Records carry no
round: a `RoundMarker(loop, r)` follows each round's data on every channel,
as a watermark follows its data. Rounds go in lockstep: round r+1 starts
only once round r is complete on every kernel, so between two markers a
channel holds one round's data, and an operator's round is complete once
its marker has come on every input (it is then told: `Operator.on_round`).

Deciding that a round is complete everywhere (timely's progress tracking,
made coarse by the lockstep): on each kernel a `LoopControl` counts the
loop's *members* (every instance inside the loop, its feedback and leaving
steps too) that have had the round's marker on every input. When all have
(and in round 0 every entry, head or enter step, has closed its input), the
kernel's feedback step sends `RoundMarker(loop, r, count)` to the head on
every kernel, after the records it fed back in round r (`count` of them).
A head with that marker from every kernel knows round r is complete
everywhere and how much came back in all: nothing (or `max_rounds`) ends
the run, and every kernel's head, seeing the same markers, decides alike.

When runs start:

* A loop inside another: its entries' outer time is the enclosing loop's
  round. An entry closes round 0 when the enclosing round's marker has come
  on all its inputs (or the end of input), and hands that marker on at the
  run's end; the enclosing round waits for the run, so nothing comes from
  outside while it lasts.
* A loop at the top level runs as the outer watermark moves (event time).
  Its entries hold what comes from outside. A kernel whose watermark moved
  (or whose input ended, or which still holds records a run may take)
  asks every kernel for the next run (`START` on the back edge); each
  answers once it is between runs (`JOIN`: its watermark, whether its
  inputs ended, what it holds). With every answer in, each kernel decides
  alike: the run goes up to the least watermark F and takes in what came
  with a time below F (a record without time: whatever came), at most
  `max_in_flight` records per kernel (Faucet); the rest waits. At the run's
  end the entries pass F on (none while records below F still wait), so a
  window after the loop sees it only after every round for earlier times;
  after the run that takes in the end of every input, the end of input.
  Without event time, the watermark moves only at the end: one run.

Snapshots (a run with a `state_dir`): an entry aligns an epoch's marker
over its outside inputs and notes where it came among its waiting records
(`_Mark`); the record behind it waits. The marker goes into the loop when
a run starts, if every kernel's entries have it (JOIN says which they
have): the loop is then between runs everywhere, so the loop's steps
snapshot with nothing in flight (their `Instance` alignment, as outside
loops), and the entry's own part is the records that came before the marker
and still wait, its outer watermarks then, and the loop's run count. A run
takes in no record behind a marker not yet in the loop. The last kernel to
get a marker asks for a run (which may take in nothing), so markers go in
even when no watermark moves. A kernel whose inputs have all ended has in
effect every later marker (nothing more comes before any): while another
kernel's inputs go on, the epochs wait for it on no kernel (JOIN says it
has ended), and its entries pass in each epoch the others have, their part
being all that still waits, so epochs keep completing while any kernel
reads. Once every kernel's inputs have ended, markers after the last one
the first of them to end got (JOIN says which) never reach every kernel:
they are dropped by the next run, the final one, on every kernel alike,
which then takes in the records behind them; the loop's steps end after
it, which stands for them.

Flow control (Faucet, `max_in_flight`): besides what a run takes in, what
waits at the entries is bounded, by pausing sources (`check_room`). A
kernel's sources pause, as under backpressure but without holding what
other kernels send (the loop's START, JOIN and round markers come that
way), while its entries hold `max_in_flight` records, whatever their time;
records without event time go into runs as they come, and with as many
records waiting as a run takes in, the next run takes them in even ahead
of the outer watermark (a pause must not wait for a watermark that the
paused sources would move). A kernel whose entries hold that many that a
run can take in now (before any epoch mark) says so to every kernel
(`RoundMarker.FULL` on the back edge): records from their sources may wait
there (an exchange before the loop), so they pause too, until it says it
has room, which its own next runs make.
"""

from __future__ import annotations

import math
import sys

from kernel.dataflow import IDLE, EpochMarker, RoundMarker, TimedBatch
from kernel.dataflow._errors import KernelError
from kernel.dataflow._loops import ENTER, FEEDBACK, HEAD
from kernel.dataflow._operator import Operator, Unfinished

from ._instance import END, Instance, _call, _handler_name, _returned
from ._progress import Frontier

_INF = math.inf
_UNTIMED = sys.float_info.max  # a record without event time: below +inf only
_NOW = -_INF  # (a JOIN's `earliest`) records without event time that any run may take (max_in_flight)
# rounds of one run after which a loop without max_rounds says that it goes on (then 10x that...)
LONG_RUN = 1000


class LoopControl:
    """One loop on one kernel: counts its members' rounds, starts rounds,
    starts and ends runs (see the module docstring)."""

    def __init__(self, scope) -> None:
        self.id = scope.id
        self.name = scope.name
        self.max_rounds = scope.max_rounds
        self.top = scope.parent is None  # runs start on watermarks (else: enclosing rounds)
        self.members = 0  # instances that have every round's marker on every input
        self.done: dict[int, int] = {}  # round -> members whose inputs all had its marker
        self.entries: list[Entry] = []  # this kernel's head and enter steps
        self.closed = 0  # entries whose outer time has ended in this run
        self.feedback: FeedbackInstance | None = None
        self.back: BackEdge | None = None  # the feedback's sending end
        self.head: Head | None = None
        self.running = False  # a run is under way here
        self.runs = 0  # runs started (or lapsed) here
        # a loop at the top level: the latest run a kernel asked for, the
        # latest this kernel answered, the answers so far (run -> [kernels,
        # least watermark, all ended]), the watermark the last run went up to
        self.asked = self.joined = 0
        self.answers: dict[int, list] = {}
        self.frontier = -_INF
        self.reported = None  # this kernel's last answer's (watermark, ended, held, earliest)
        self.epoch_done = 0  # epoch markers up to this one went into the loop
        # records admitted into a run, per kernel (Faucet: the rest wait at the entries)
        self.in_flight = _INF if scope.max_in_flight is None else scope.max_in_flight
        # Faucet at the top level: records without event time go into runs
        # before the input ends, and this kernel's sources pause while an
        # entry here, or on another kernel, holds as many records as a run
        # takes in (`check_room`)
        self.faucet = scope.max_in_flight is not None and self.top
        self.holding = False  # this kernel's sources are paused by this loop
        self.full = False  # what this kernel last told every kernel (RoundMarker.FULL)
        self.full_peers: set[int] = set()  # back-edge channels whose kernel said it is full
        self.final = False  # this run ends every input (its entries end after it)
        self.finished = False  # the final run has started
        self.rounds = 0  # rounds completed here, over every run (benches)
        self.long_run = LONG_RUN  # a run's round at which a loop without max_rounds says it goes on

    def member_done(self, round: int) -> None:
        self.done[round] = self.done.get(round, 0) + 1
        self._check(round)

    def entry_closed(self) -> None:
        if not self.running:  # a loop inside another: the first entry's outer time ended
            self.running = True
            self.runs += 1
        self.closed += 1
        self._check(0)

    def _check(self, round: int) -> None:
        if self.done.get(round, 0) == self.members and (round or self.closed == len(self.entries)):
            del self.done[round]
            self.rounds += 1
            self.feedback.end_round(round)

    # -- runs of a loop at the top level: agreed by every kernel ---------------------
    # A kernel whose outer watermark moved asks every kernel for the next run
    # (START); each answers once it is between runs (JOIN, with its own
    # watermark and whether its inputs have all ended, or are all idle);
    # with every answer in, each kernel decides alike: the run goes up to
    # the least watermark F of the kernels whose inputs are active (with
    # none, the largest of the idle ones': an idle input holds nothing
    # back, as in `Frontier`), and takes in what came with a time below F
    # (a record without time: whatever came), or nothing moved and the
    # attempt lapses.

    def outer_moved(self) -> None:
        """An entry's outer watermark moved, its input ended, or a run left
        records waiting (max_in_flight): ask for a run if that may start one."""
        if self.running or self.asked > self.runs or self.finished:
            return
        state = self._state()
        if state == self.reported:
            return  # what this kernel said last time lapsed, and nothing changed
        frontier, ended, _, earliest, epoch, idle = state
        # (an epoch's marker goes into the loop only at a run's start, once
        # every kernel's entries have it, and only the last to get it knows:
        # without a run then, the loop's steps would snapshot it only when
        # the watermark next moves, after the end for records without time,
        # and max_in_flight's paused sources would wait for the records
        # behind its mark; a kernel gone idle no longer holds the others
        # back, and only it knows)
        if (frontier > self.frontier or ended or idle or _takes(earliest, frontier)
                or epoch > self.epoch_done):
            self.asked = self.runs + 1
            self.back.deliver(0, RoundMarker(self.id, RoundMarker.START, self.asked))

    def run_asked(self, run: int) -> None:
        """A kernel (maybe this one) asks for run `run`."""
        self.asked = max(self.asked, run)
        self._join()

    def joined_by(self, marker: RoundMarker) -> None:
        """A kernel's answer for run `marker.count`."""
        answer = self.answers.setdefault(marker.count, [0, _INF, True, 0, _INF, 2**64 - 1, 2**64 - 1,
                                                        False, None])
        answer[0] += 1
        if marker.final:  # at +inf
            pass
        elif marker.idle:  # holds back no kernel: only the largest idle watermark counts, when none is active
            answer[8] = marker.frontier if answer[8] is None else max(answer[8], marker.frontier)
        else:
            answer[1] = min(answer[1], marker.frontier)
            answer[7] = True  # a kernel whose inputs are active
        answer[2] = answer[2] and marker.final
        answer[3] = max(answer[3], marker.held)
        answer[4] = min(answer[4], marker.earliest)
        if marker.final:  # that kernel's inputs have all ended: it gets no later epoch
            answer[6] = min(answer[6], marker.epoch)
        else:  # (one whose inputs have ended takes part in any: `Entry.pass_epochs`)
            answer[5] = min(answer[5], marker.epoch)
        self._decide()

    def _join(self) -> None:
        run = self.runs + 1
        if not self.running and self.asked >= run and self.joined < run and not self.finished:
            self.joined = run
            self.reported = state = self._state()
            frontier, ended, held, earliest, epoch, idle = state
            self.back.deliver(0, RoundMarker(self.id, RoundMarker.JOIN, run, ended, frontier, held, earliest,
                                             epoch, idle))

    def _decide(self) -> None:
        run = self.runs + 1
        answer = self.answers.get(run)
        if self.joined < run or answer is None or answer[0] < self.head.peers:
            return
        del self.answers[run]
        self.runs = run
        _, active_least, ended, held, earliest, epoch, last_everywhere, any_active, idle_largest = answer
        if ended:  # (with a kernel whose inputs go on, those ended wait for no epoch)
            epoch = last_everywhere
        frontier = active_least if any_active or idle_largest is None else idle_largest
        frontier = max(frontier, self.frontier)  # (it never moves back: an idle kernel may be active again)
        final = ended and held <= self.in_flight
        if frontier > self.frontier or final or _takes(earliest, frontier) or epoch > self.epoch_done:
            # epoch markers every kernel's entries have go into the loop first,
            # each with its entry's snapshot: the loop is still between runs
            before = (self.frontier, run - 1)
            news = epoch > self.epoch_done  # this run changes what waits here
            if epoch > self.epoch_done:
                for entry in self.entries:
                    entry.pass_epochs(epoch, before)
                self.epoch_done = epoch
            if ended:
                # every kernel's inputs have ended: epochs after the last one
                # the first to end got never come everywhere, and would hold
                # the loop's steps (whose inputs end only after this run)
                # aligning forever, and the records behind them waiting:
                # their markers go, on every kernel alike, and the steps'
                # ends stand in for them (`EpochTracker.ended`). (While
                # some kernel's go on, a kernel whose inputs have ended
                # takes part in its epochs instead: `Entry.pass_epochs`.)
                for entry in self.entries:
                    news = entry.drop_epochs(last_everywhere) or news
            self.running = True
            self.frontier = frontier
            self.final = self.finished = final
            budget = self.in_flight
            # Faucet: with as many records waiting here as a run takes in,
            # this run takes them whatever their time (`check_room`)
            early = self.faucet and self._waiting()[0] >= budget
            for entry in self.entries:
                admitted = entry.admit(frontier, budget, early)
                budget -= admitted
                news = news or admitted > 0
            if news:  # what waits after the run may equal what this kernel said, yet be new
                self.reported = None
            # records with a time below the frontier still wait (max_in_flight):
            # the watermark must not pass them
            waiting = self._earliest() < frontier
            for entry in self.entries:
                entry._close(END if final else -_INF if waiting else frontier)
            if self.faucet:
                self.check_room()
        else:  # nothing moved everywhere: the attempt lapses
            self._between_runs()

    def restore(self, state) -> None:
        """Back to what a snapshot taken between runs held (`pass_epochs`):
        the last run's watermark, the runs so far, the epoch of the snapshot."""
        self.frontier, runs, self.epoch_done = state
        self.runs = self.asked = self.joined = runs

    def _between_runs(self) -> None:
        self._join()
        self._decide()
        self.outer_moved()

    def _state(self) -> tuple:
        """(outer watermark, inputs all ended, records waiting, their earliest
        time: _NOW when max_in_flight lets any run take them (records
        without time wait, or as many as a run takes in: `check_room`), the
        latest epoch every entry here has: a new one is news, for a run may
        now take in the records behind it, and whether the inputs are all
        idle: `_outer_frontier`)."""
        held, earliest, untimed = 0, _INF, False
        for entry in self.entries:
            n, first, without_time = entry.waiting()
            held += n
            earliest = min(earliest, first)
            untimed = untimed or without_time
        if self.faucet and (untimed or (held and self._waiting()[1] >= self.in_flight)):
            earliest = _NOW
        frontier, idle = self._outer_frontier()
        return frontier, self._ended(), held, earliest, self._ready_epoch(), idle

    def _ready_epoch(self) -> int:
        """The latest epoch whose marker every entry here has. An entry whose
        outside inputs have all ended has every epoch's (nothing more comes
        before any): with others open, it waits for none; with every entry
        ended, the kernel's last epoch is the least they got."""
        entries = [entry for entry in self.entries if not entry.outer.ended] or self.entries
        return min(entry.ready_epoch for entry in entries)

    def _waiting(self) -> tuple[int, int]:
        """Records waiting here: all, and those before the first epoch mark
        (a run may take them in now)."""
        every = takeable = 0
        for entry in self.entries:
            counts = entry.counts(_INF)
            every += counts[0]
            takeable += counts[1]
        return every, takeable

    def _earliest(self) -> float:
        """The earliest time among the records waiting (without time: _UNTIMED)."""
        return min((entry.waiting()[1] for entry in self.entries), default=_INF)

    # -- Faucet: this kernel's sources wait while enough records wait ----------------
    # Every record waiting at this kernel's entries counts, whatever its
    # time: once N (max_in_flight) wait, the sources pause, and the next
    # run takes N in even if the outer watermark has not passed their time
    # (`_state` asks for it, `admit` takes them early), so a pause never
    # waits for a watermark that the paused sources would move. Records
    # taken early are still ahead of the watermark the run passes on (it
    # goes up to the least watermark, below their time), so windows after
    # the loop stay exact; only a run may hold records of later times.
    # Records behind an epoch's mark count too: every kernel's entries get
    # that epoch's marker (the sources send one every interval, paused or
    # not; the last kernel to get it asks for a run) and a run takes it in,
    # or a kernel's inputs have all ended before it, and the next run drops
    # the mark on every kernel. A kernel that holds N records before any
    # mark tells every kernel that it is full: they pause too, as records
    # from their sources may come to its entries (an exchange before the
    # loop); its own next run takes N of them in, so it has room again
    # whatever they do.

    def check_room(self) -> None:
        """Pause or resume this kernel's sources, and tell every kernel when
        this one becomes full or has room again."""
        limit = self.in_flight
        mine = everywhere = 0
        if not self.finished:
            for entry in self.entries:
                counts = entry.counts(limit - everywhere)
                mine += counts[0]
                everywhere += counts[1]
        full = everywhere >= limit
        if full != self.full:
            self.full = full
            self.back.deliver(0, RoundMarker(self.id, RoundMarker.FULL, int(full)))
        holding = mine >= limit or bool(self.full_peers)
        if holding != self.holding:
            self.holding = holding
            self.head.runtime.hold_sources(self, holding)

    def peer_full(self, channel: int, full: bool) -> None:
        """The kernel behind back-edge `channel` is full, or has room again."""
        if full:
            self.full_peers.add(channel)
        else:
            self.full_peers.discard(channel)
        self.check_room()

    def _outer_frontier(self) -> tuple[float, bool]:
        """This kernel's outer watermark, and whether its inputs are all idle:
        the least over its entries whose input is active; with none active
        (all idle or ended), the largest of the idle ones' (`Frontier`'s
        rule, across entries; `_decide` applies it across kernels). An entry
        whose inputs are all at +inf (what a source says just before its
        end) counts as ended, as a channel there does in `Frontier`: as an
        active entry its +inf was the outer watermark beside an idle one."""
        active, idle = [], []
        for entry in self.entries:
            outer = entry.outer
            if outer.ended or not outer.value < _INF:
                continue
            (idle if outer.idle else active).append(outer.value)
        if active:
            return min(active), False
        if idle:
            return max(idle), True
        return _INF, False

    def _ended(self) -> bool:
        return all(entry.outer.ended for entry in self.entries)

    # -- rounds --------------------------------------------------------------------------

    def round_complete(self, round: int, fed_back: int) -> None:
        """Round `round` is complete on every kernel; `fed_back` records
        came back from it, over all kernels."""
        if fed_back and (self.max_rounds is None or round + 1 < self.max_rounds):
            if round + 1 >= self.long_run and self.max_rounds is None:
                self._goes_on(round + 1, fed_back)
            self.head.release(round + 1)
            for entry in self.entries:
                entry._forward(RoundMarker(self.id, round + 1))
            return
        self.head.drop()
        self.closed = 0
        self.running = False
        final, self.final = self.final, False
        for entry in self.entries:
            entry.end_run(final)
        if self.top:
            self._between_runs()

    def _goes_on(self, round: int, fed_back: int) -> None:
        """A run has gone on for `long_run` rounds without max_rounds: a loop
        that never converges runs for ever, and said nothing. Said once per
        tenfold (1,000, 10,000... rounds), by kernel 0 (every kernel decides
        alike)."""
        self.long_run *= 10
        context = self.head.runtime.kernel.context
        if context.index == 0:
            context.logger.warning(
                "%s: round %d of one run, and its rounds still feed records back (%d in the last one): "
                "a loop whose rounds always feed something back never ends; give it max_rounds=N if it "
                "may not converge", self.name, round, fed_back)


def _takes(earliest: float, frontier: float) -> bool:
    """A run up to `frontier` takes in records waiting since `earliest`."""
    return earliest < frontier or earliest == _NOW


class Membership:
    """How an instance inside loops handles their round markers: once one
    has come on every input, it calls `on_round` (for the innermost loop),
    passes it on (when the instance's output is inside that loop) and tells
    the loop's control."""

    __slots__ = ("channels", "controls", "innermost", "passes", "seen")

    def __init__(self, controls: dict, innermost: int, passes: frozenset, channels: int) -> None:
        self.controls = controls
        self.innermost = innermost
        self.passes = passes
        self.channels = channels
        self.seen: dict[tuple[int, int], int] = {}

    def marker(self, instance: Instance, marker: RoundMarker, channel: int = 0, pending=(),
               at: int = 0) -> bool:
        """Returns True when on_round handed its output on in part (an
        aggregate's results for many keys, `Unfinished`): the marker goes on,
        and the round is done here, after the last piece."""
        key = (marker.loop, marker.round)
        seen = self.seen.get(key, 0) + 1
        if seen < self.channels:
            self.seen[key] = seen
            return False
        self.seen.pop(key, None)
        if marker.loop == self.innermost:
            returned = _call(instance, "on_round", marker.round)
            if returned is not None:  # one check a round: more to come, or a user's mistake
                if returned.__class__ is not Unfinished:
                    raise _returned(instance, "on_round", returned)
                return instance.park_then(returned, channel, lambda *_: self._round_done(instance, marker),
                                          pending, at, "on_round")
        self._round_done(instance, marker)
        return False

    def _round_done(self, instance: Instance, marker: RoundMarker) -> None:
        if marker.loop in self.passes:
            instance._forward(RoundMarker(marker.loop, marker.round))
        self.controls[marker.loop].member_done(marker.round)


class Entry(Instance):
    """A head or enter step: passes its outside input on as the next run's
    round 0 (holding it while a run is under way), and closes round 0 when
    the run starts (see the module docstring)."""

    __slots__ = ("behind", "boundary", "control", "controls", "epoch_aligning", "epoch_arrived", "extra",
                 "held_outside", "outer", "outer_index", "outer_seen", "outside_open", "ready_epoch")

    # never chained: outside input may have to wait (`held_outside`), so it
    # goes through the inbox, where `activate` sees its channel
    @property
    def chained(self) -> bool:
        return False

    @chained.setter
    def chained(self, value: bool) -> None:
        pass

    def setup(self, control: LoopControl, controls: dict, outside: list[int]) -> None:
        self.control = control
        self.controls = controls
        self.outer = Frontier()  # the outside channels' watermarks
        self.outer_index = {channel: self.outer.add_channel() for channel in outside}
        self.outside_open = len(outside)
        self.outer_seen: dict[tuple[int, int], int] = {}
        self.held_outside: list = []  # outside data (and _Marks) waiting for a run
        self.boundary = None  # what ended the outer time of this run
        # epoch alignment over the outside channels (as Instance's), what came
        # behind the marker meanwhile, the latest epoch aligned, and the
        # entry's own part of the snapshot being taken
        self.epoch_arrived: set | None = None
        self.epoch_aligning = 0
        self.behind: list = []
        self.ready_epoch = 0
        self.extra = None

    def activate(self):
        self.scheduled = False
        pending, self.pending = self.pending, []
        for channel, payload in pending:
            self._take(channel, payload)
        if self.drain_waiters and not self.pending:  # sources waiting for it to count their records
            self.wake_drain_waiters()

    def _in(self, batch: list) -> None:
        """Records let into the loop: handed on by the step's emit, not
        through its on_batch, so counted here (metrics' records in: a loop's
        input step counted none)."""
        self.records_in += len(batch)
        self.op.emit(batch)

    def _take(self, channel: int, payload) -> None:
        if channel not in self.outer_index:
            self._back(channel, payload)
        elif self.epoch_arrived is not None and channel in self.epoch_arrived:
            self.behind.append((channel, payload))  # behind its epoch marker: waits for the others'
        elif isinstance(payload, list):
            if self.control.top:
                self.held_outside.append(payload)  # until a run takes its time in
                if self.control.faucet:
                    # records without time go in as they come, the rest
                    # once as many wait as a run takes in (`check_room`)
                    self.control.check_room()
                    self.control.outer_moved()
            else:  # a loop inside another: outside data comes only between runs
                self._in(payload)
        else:
            self._outside(channel, payload)

    # -- epochs: snapshots between runs ------------------------------------------------

    def _epoch_marker(self, channel: int, epoch: int) -> None:
        if self.epoch_arrived is None:
            self.epoch_arrived = set()
            self.epoch_aligning = epoch
        self.epoch_arrived.add(channel)
        self._check_epoch()

    def _check_epoch(self) -> None:
        if self.epoch_arrived is None or len(self.epoch_arrived) < self.outside_open:
            return
        epoch = self.epoch_aligning
        self.epoch_arrived = None
        if self.control.top:  # goes in at the start of a run every kernel has it for
            self.held_outside.append(_Mark(epoch, self.outer.snapshot()))
            self.ready_epoch = epoch
        else:  # a loop inside another is between runs when an epoch comes
            self._pass_epoch(epoch, [], self.outer.snapshot(), None)
        behind, self.behind = self.behind, []
        for channel, payload in behind:
            self._take(channel, payload)
        if self.control.top and not self.ended:
            self.control.outer_moved()

    def pass_epochs(self, upto: int, control_state) -> None:
        """Epoch markers up to `upto` go into the loop (a run is about to
        start; the last one ended everywhere), each with this entry's
        snapshot: the data still waiting that came before it. An entry
        whose outside inputs have all ended passes the epochs it never got
        too (another kernel's input goes on), as if their markers had come
        after its end: everything waiting came before them."""
        items, self.held_outside = self.held_outside, []
        before: list = []
        passed = self.control.epoch_done
        for at, item in enumerate(items):
            if item.__class__ is not _Mark:
                before.append(item)
                continue
            if item.epoch > upto:
                self.held_outside = before + items[at:]
                return
            self._pass_epoch(item.epoch, before, item.outer, control_state)
            passed = item.epoch
        self.held_outside = before
        if self.outer.ended:
            for epoch in range(passed + 1, upto + 1):
                self._pass_epoch(epoch, before, self.outer.snapshot(), control_state)
            self.ready_epoch = max(self.ready_epoch, upto)

    def drop_epochs(self, after: int) -> bool:
        """Epoch marks after `after` go (see `LoopControl._decide`); any?"""
        held = self.held_outside
        self.held_outside = [item for item in held if item.__class__ is not _Mark or item.epoch <= after]
        return len(self.held_outside) < len(held)

    def _pass_epoch(self, epoch: int, held: list, outer, control_state) -> None:
        if control_state is not None:
            control_state = (*control_state, epoch)
        self.extra = (held, outer, control_state)
        self.runtime.snapshot(self, epoch)
        self.extra = None
        self._forward(EpochMarker(epoch))

    def snapshot_part(self, operator_snapshot) -> tuple:
        return (*super().snapshot_part(operator_snapshot), self.extra)

    def restore_part(self, part: tuple):
        *part, (held, outer, control_state) = part
        self.held_outside = list(held)
        self.outer.restore(*outer)
        self.outside_open = self.outer.open
        if control_state is not None:
            self.ready_epoch = control_state[-1]
        if control_state is not None:
            self.control.restore(control_state)
        return super().restore_part(tuple(part))

    def _back(self, channel: int, payload) -> None:  # (only a head has a back edge)
        raise AssertionError(f"{self.name}: input on channel {channel} from nowhere")

    def admit(self, frontier: float, budget: float, early: bool = False) -> int:
        """A run up to `frontier` starts: what came from outside with a time
        below it (records without time: only once every input has ended),
        at most `budget` records, goes on as its round 0; returns how many.
        `early` (Faucet, as many records waiting as a run takes in): then
        records ahead of `frontier` too, in the order they came, up to
        `budget`."""
        held, self.held_outside = self.held_outside, []
        keep = self.held_outside.append
        emit = self._in
        admitted = 0
        for at, batch in enumerate(held):
            room = budget - admitted
            if batch.__class__ is _Mark:  # an epoch not yet in the loop: what follows waits
                self.held_outside.extend(held[at:])
                break
            if room <= 0:
                keep(batch)
            elif batch.__class__ is not TimedBatch:
                if not (_UNTIMED < frontier or self.control.faucet):
                    keep(batch)
                    continue
                if len(batch) <= room:
                    emit(batch)
                    admitted += len(batch)
                else:
                    head, rest = _head_and_rest(batch, int(room))
                    emit(head)
                    keep(rest)
                    admitted += len(head)
            else:
                stamps = batch.timestamps
                now = [i for i, t in enumerate(stamps) if t < frontier][:int(min(room, len(batch)))]
                if len(now) == len(batch):
                    emit(batch)
                elif now:
                    taken = set(now)
                    later = [i for i in range(len(batch)) if i not in taken]
                    emit(TimedBatch([batch[i] for i in now], [stamps[i] for i in now]))
                    keep(TimedBatch([batch[i] for i in later], [stamps[i] for i in later]))
                else:
                    keep(batch)
                admitted += len(now)
        if early and admitted < budget:
            admitted += self._admit_early(budget - admitted)
        return admitted

    def _admit_early(self, room: float) -> int:
        """Up to `room` records waiting before the first epoch mark, in the
        order they came, whatever their time, go on; returns how many."""
        held, self.held_outside = self.held_outside, []
        keep = self.held_outside.append
        emit = self._in
        admitted = 0
        for at, batch in enumerate(held):
            left = room - admitted
            if batch.__class__ is _Mark or left <= 0:
                self.held_outside.extend(held[at:])
                break
            if len(batch) <= left:
                emit(batch)
                admitted += len(batch)
                continue
            head, rest = _head_and_rest(batch, int(left))
            emit(head)
            keep(rest)
            admitted += len(head)
        return admitted

    def waiting(self) -> tuple[int, float, bool]:
        """Records waiting for a run, their earliest time (records without
        time count as the largest float: without max_in_flight only the end
        lets them in), and whether some have no time."""
        count, earliest, untimed = 0, _INF, False
        for batch in self.held_outside:
            if batch.__class__ is _Mark:
                continue
            count += len(batch)
            if batch.__class__ is TimedBatch:
                if batch.timestamps:
                    earliest = min(earliest, min(batch.timestamps))
            elif batch:
                earliest = min(earliest, _UNTIMED)
                untimed = True
        return count, earliest, untimed

    def counts(self, limit: float) -> tuple[int, int]:
        """Records waiting (Faucet: see `LoopControl.check_room`): all of
        them, and those before the first epoch mark (a run can take them
        in without another epoch going in first); counted until the second
        reaches `limit`, or the first past a mark."""
        every = takeable = 0
        marked = False  # past a mark: only the first count goes on
        for batch in self.held_outside:
            if batch.__class__ is _Mark:
                marked = True
                continue
            every += len(batch)
            if not marked:
                takeable += len(batch)
                if takeable >= limit:
                    break
            elif every >= limit:
                break
        return every, takeable

    def _outside(self, channel: int, payload) -> None:
        cls = payload.__class__
        if cls is EpochMarker:
            self._epoch_marker(channel, payload.epoch)
            return
        outer = self.outer
        index = self.outer_index[channel]
        if cls is RoundMarker:  # an enclosing loop's round ended on this channel
            key = (payload.loop, payload.round)
            seen = self.outer_seen.get(key, 0) + 1
            if seen < self.outside_open:
                self.outer_seen[key] = seen
                return
            self.outer_seen.pop(key, None)
            self._close(payload)
            return
        if payload is END:
            outer.observe_end(index)
            self.outside_open -= 1
            self._check_epoch()  # an ended channel has nothing more to align
            if not self.control.top:
                if self.outside_open == 0:
                    self._close(END)
                return
        elif payload is IDLE:
            outer.observe_idle(index)
        else:
            if not self.control.top:  # (between runs of a loop inside another)
                self._forward(payload)
                return
            outer.observe_watermark(index, payload)
        if not self.ended:
            self.control.outer_moved()

    def _close(self, boundary) -> None:
        """Round 0 of the run ends here; `boundary` goes on after the run."""
        self.boundary = boundary
        self._forward(RoundMarker(self.control.id, 0))
        self.control.entry_closed()

    def end_run(self, final: bool) -> None:
        """The run is over: hand on what ended its outer time."""
        boundary, self.boundary = self.boundary, None
        if boundary is END:
            if final or not self.control.top:
                self._end()
            else:  # this kernel's input ended, another's not yet
                self._forward(_INF)
        elif boundary.__class__ is RoundMarker:
            self._forward(boundary)
            self.controls[boundary.loop].member_done(boundary.round)
        elif boundary > -_INF:
            self._forward(boundary)  # the outer watermark passes the loop

    def _end(self) -> None:
        self._finish()


class _Mark:
    """Where an epoch's marker came among an entry's waiting records, with
    the entry's outer frontier then (`Frontier.snapshot()`)."""

    __slots__ = ("epoch", "outer")

    def __init__(self, epoch: int, outer: tuple) -> None:
        self.epoch = epoch
        self.outer = outer


class Head(Entry):
    """The loop's input and, on port 1, its back edge from every kernel's
    feedback step: what comes back is held, by the round it was fed back
    in, until that round is complete everywhere."""

    __slots__ = ("arrived", "back_open", "back_rounds", "fed_back", "held", "peers",
                 "waiting_end")

    def setup_back(self, back: list[int]) -> None:
        self.back_rounds = dict.fromkeys(back, 0)  # channel -> markers it has delivered this run
        self.back_open = len(back)
        self.peers = len(back)
        self.held: dict[int, list] = {}  # round -> batches for it
        self.arrived: dict[int, int] = {}  # round -> kernels whose marker came
        self.fed_back: dict[int, int] = {}  # round -> records fed back, so far
        self.waiting_end = False  # END went on; the back edges' ends are still to come

    def _back(self, channel: int, payload) -> None:
        if isinstance(payload, list):
            self.held.setdefault(self.back_rounds[channel] + 1, []).append(payload)
            return
        if payload is END:
            self.back_open -= 1
            if self.back_open == 0 and self.waiting_end:
                self.ended = True
                self.runtime.instance_ended(self)
            return
        if payload.__class__ is not RoundMarker:
            return  # a watermark the feedback passes on (rounds have no event time)
        round = payload.round
        if round == RoundMarker.START:
            self.control.run_asked(payload.count)
            return
        if round == RoundMarker.JOIN:
            self.control.joined_by(payload)
            return
        if round == RoundMarker.FULL:
            self.control.peer_full(channel, bool(payload.count))
            return
        self.back_rounds[channel] += 1
        self.fed_back[round] = self.fed_back.get(round, 0) + payload.count
        arrived = self.arrived[round] = self.arrived.get(round, 0) + 1
        if arrived == self.peers:
            del self.arrived[round]
            self.control.round_complete(round, self.fed_back.pop(round))

    def release(self, round: int) -> None:
        for batch in self.held.pop(round, ()):
            self._in(batch)

    def drop(self) -> None:
        """The run is over: what the last round fed back goes (max_rounds)."""
        self.held.clear()
        for channel in self.back_rounds:
            self.back_rounds[channel] = 0

    def _end(self) -> None:
        # END goes into the loop now, but the head ends only once every
        # kernel's feedback has sent its end back: the transport waits for
        # those, and they must find the head still there.
        self._forward(END)
        self.waiting_end = True
        if self.back_open == 0:
            self.ended = True
            self.runtime.instance_ended(self)


class FeedbackInstance(Instance):
    """The feedback step: sends what it gets back to this kernel's head,
    and each round's end, with its count, to every kernel's head once every
    member here is done with the round (`LoopControl`)."""

    __slots__ = ("control",)

    def end_round(self, round: int) -> None:
        op = self.op
        count, op.fed = op.fed, 0
        self._forward(RoundMarker(self.control.id, round, count))


class BackEdge:
    """The sending end of a loop's back edge on one kernel: records to this
    kernel's head; round markers and the end to every kernel's head."""

    chained = False

    def __init__(self, channel: int, head: Head, local_channel: int, transport) -> None:
        self.channel = channel
        self.head = head
        self.local_channel = local_channel
        self.transport = transport

    def deliver(self, _channel: int, payload) -> None:
        self.head.deliver(self.local_channel, payload)
        if isinstance(payload, list):
            return
        transport = self.transport
        wire = None if payload is END else payload
        for dest in range(transport.peers):
            if dest != transport.index:
                transport.send_progress(dest, self.channel, wire)


INSTANCE_CLASSES = {HEAD: Head, ENTER: Entry, FEEDBACK: FeedbackInstance}


def back_edge(runtime, head: Head, port: int) -> BackEdge:
    """Wire a back edge into `head`: a channel from every kernel."""
    transport = runtime.transport
    channel = transport.allocate() if transport.peers > 1 else -1
    local_channel = None
    for source in range(transport.peers):
        inbox = head.add_channel(port)
        if source == transport.index:
            local_channel = inbox
        else:
            runtime._remote_inboxes[(channel, source)] = (head, inbox)
    return BackEdge(channel, head, local_channel, transport)


def wire_loops(graph, instances: list[Instance], nodes: list) -> dict[int, LoopControl]:
    """A `LoopControl` per loop, and each instance's part in the loops it is
    in (`nodes[i]` is instance i's step)."""
    controls = {scope.id: LoopControl(scope) for scope in graph.loops}
    for instance, node in zip(instances, nodes):
        scope = node.input_scope
        if node.loop is None:
            continue
        chain = scope.chain() if scope is not None else []
        for loop in chain:
            controls[loop.id].members += 1
        control = controls[node.loop.id]
        if node.role in (HEAD, ENTER):
            outside = [c for c, port in enumerate(instance.ports) if port == 0]
            instance.setup(control, controls, outside)
            control.entries.append(instance)
            if node.role == HEAD:
                control.head = instance
                instance.setup_back([c for c, port in enumerate(instance.ports) if port == 1])
            continue
        if node.role == FEEDBACK:
            instance.control = control
            control.feedback = instance
            control.back = instance.targets[0][0]
            passes = frozenset()
        else:  # inside the loop, or leaving it (its output is outside)
            out = node.output_scope
            passes = frozenset(loop.id for loop in out.chain()) if out is not None else frozenset()
            if scope.id in passes:
                refuse_emits_between_rounds(instance, scope.name)
        instance.loop = Membership(controls, scope.id, passes, len(instance.ports))
    return controls


# A watermark, a timer or the end of input reaches a loop's steps only
# between its runs (a run passes the outer watermark on once its last round
# is done): records a step inside the loop emitted then would go into no
# round, fed back after the run (dropped) or counted in a later one's.
_BETWEEN_ROUNDS = ("on_timer", "on_watermark", "on_end")


def refuse_emits_between_rounds(instance: Instance, loop: str) -> None:
    """Make `instance`'s operator (inside `loop`, its output too) fail,
    naming it, if it emits records in a handler that runs between rounds.
    Only handlers its class overrides are wrapped (the defaults emit
    nothing); the check costs a call per watermark, none per record."""
    op = instance.op
    for handler in _BETWEEN_ROUNDS:
        if getattr(type(op), handler) is not getattr(Operator, handler):
            setattr(op, handler, _emitting_nothing(instance, loop, handler, getattr(op, handler)))


def _emitting_nothing(instance: Instance, loop: str, handler: str, method):
    op = instance.op

    def refuse(batch: list) -> None:
        if batch:  # (an aggregate's on_end emits its state, empty after each round)
            raise KernelError(
                f"{instance.name}: emitted {len(batch)} record(s) in {_handler_name(op, handler)}, inside "
                f"the loop {loop!r}, where no round is under way to take them (a watermark, a timer or the "
                f"end of input reaches a loop's steps between its runs): emit in on_batch or on_round, or "
                f"put the step after the loop")

    def guarded(*args):
        emit, op.emit = op.emit, refuse
        try:
            return method(*args)
        finally:
            op.emit = emit

    return guarded


def _head_and_rest(batch: list, n: int) -> tuple[list, list]:
    """The first `n` records of `batch` and the others, each a TimedBatch
    with its stamps when `batch` is one."""
    if batch.__class__ is TimedBatch:
        stamps = batch.timestamps
        return TimedBatch(batch[:n], stamps[:n]), TimedBatch(batch[n:], stamps[n:])
    return batch[:n], batch[n:]
