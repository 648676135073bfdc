"""What a channel carries: batches (plain lists, or `TimedBatch`es with event
time) and the progress markers that travel in band behind them (`IDLE`, an
`EpochMarker`; a watermark is a float, end of input the transport's own).

This is the vocabulary every transport and the runtime share, the wire
protocol of a channel, so it lives at the bottom, here, where the codec
(`_codec.py`) and the key exchange (`_exchange.py`) can read it; the dataflow
layer (`kernel.dataflow`) re-exports it as part of the model operators are
written against.

Batches that carry event time.

A batch is a plain `list` of records. When a source has a `timestamp=`
function, its batches are `TimedBatch`es: still lists (every operator and
user function sees the records as they are), with a parallel list
`timestamps` of float seconds, one per record. Operators that keep or drop
records carry the timestamps along (`kernel.lowlevel.timed`); a window needs
them. Timestamps travel beside the records, never inside them, so `map`
and `map_values` can change records freely without losing their time.

`RoundMarker` ends a round of a loop (kernel/runtime/_loops.py).

`IDLE` is a progress marker, like a watermark: the sender has had no data
for a while, so its watermark must not hold anyone back (until it sends a
watermark again).
"""

from __future__ import annotations


class TimedBatch(list):
    """A list of records with `timestamps[i]` the event time of `self[i]`."""

    __slots__ = ("timestamps",)

    def __init__(self, records=(), timestamps=None) -> None:
        super().__init__(records)
        self.timestamps = [] if timestamps is None else timestamps

    def __repr__(self) -> str:
        return f"TimedBatch({list.__repr__(self)}, timestamps={self.timestamps!r})"

    def __reduce__(self):
        return (TimedBatch, (list(self), self.timestamps))


class _Idle:
    __slots__ = ()

    def __repr__(self) -> str:
        return "IDLE"

    def __reduce__(self):
        return "IDLE"


IDLE = _Idle()


class EpochMarker:
    """Epoch `epoch` ends here: a progress marker, in band after the data of
    that epoch. An operator snapshots once it has come on every input."""

    __slots__ = ("epoch",)

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def __repr__(self) -> str:
        return f"EpochMarker({self.epoch})"

    def __eq__(self, other) -> bool:
        return isinstance(other, EpochMarker) and other.epoch == self.epoch

    def __hash__(self) -> int:
        return hash(("epoch", self.epoch))


class RoundMarker:
    """Round `round` of loop `loop` ends here on this channel: a progress
    marker inside an iterative dataflow (`Stream.iterate`), in band after
    that round's data. `count` is used by the marker a loop's feedback step
    sends back to the loop's head on every kernel: how many records it fed
    back in that round (0 on every kernel: the loop is done), and `final`
    whether that kernel's loop inputs have all ended. Two rounds are no
    rounds: START asks every kernel to start run `count` of a loop, JOIN
    is a kernel's answer, with its outer watermark `frontier`, `final`, and
    how many records wait at its entries (`held`), the earliest time
    among them (`earliest`), the latest epoch whose marker has come
    on every input of its entries (`epoch`), and whether its entries'
    inputs are all idle (`idle`: then `frontier` holds back no kernel). A third, FULL, says whether
    that kernel's entries hold `max_in_flight` records that the next run
    takes in (`count` 1) or no longer (`count` 0): every kernel pauses its
    sources while one is full (Faucet's flow control).)"""

    __slots__ = ("count", "earliest", "epoch", "final", "frontier", "held", "idle", "loop", "round")

    START = 2**64 - 1
    JOIN = 2**64 - 2
    FULL = 2**64 - 3

    def __init__(self, loop: int, round: int, count: int = 0, final: bool = False,
                 frontier: float = float("-inf"), held: int = 0, earliest: float = float("inf"),
                 epoch: int = 0, idle: bool = False) -> None:
        self.loop = loop
        self.round = round
        self.count = count
        self.final = final
        self.frontier = frontier
        self.held = held
        self.earliest = earliest
        self.epoch = epoch
        self.idle = idle

    def _fields(self) -> tuple:
        return (self.loop, self.round, self.count, self.final, self.frontier, self.held, self.earliest,
                self.epoch, self.idle)

    def __repr__(self) -> str:
        return ("RoundMarker(loop={}, round={}, count={}, final={}, frontier={}, held={}, "
                "earliest={}, epoch={}, idle={})").format(*self._fields())

    def __eq__(self, other) -> bool:
        return isinstance(other, RoundMarker) and other._fields() == self._fields()

    def __hash__(self) -> int:
        return hash(("round", *self._fields()))


# An epoch number after every epoch: committing it publishes everything held
# back (the end of a run without epochs); a kernel that has ended stores its
# last snapshot under it (it stands for that kernel in every later epoch).
EVERY_EPOCH = 2**62
