"""NEXMark q0-q8 on Bytewax 0.21, for the benchmark's comparison (only
imported when Bytewax is installed).

The same generator feeds Bytewax as ours: a `DynamicSource` whose worker
makes its own share (`run_main`: one worker, the whole stream), in batches
of 1,024 as ours. Each query is written with Bytewax's own operators where
it has them (filter, map, `count_window` and `SlidingWindower` for q5,
`fold_window` for q7, `join_window` for q8) and with `stateful` /
`stateful_flat_map` where it does not, mirroring our stand-ins, and returns
the same records as ours and the references.

Bytewax's stateful operators have no event-time timers, so q4 and q6 emit
their winning bids when the input ends (`on_eof`) instead of when each
auction closes, and q5 takes the top of each window with `fold_final`:
exact for a bounded run, and less work than ours, which emits as the
watermark passes.
"""

from __future__ import annotations

import datetime
from itertools import islice

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.operators import StatefulLogic
from bytewax.operators.windowing import (
    EventClock,
    SlidingWindower,
    TumblingWindower,
    count_window,
    fold_window,
    join_window,
)
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from benches import _nexmark_queries as q
from benches._nexmark_generator import A_EXPIRES, A_ID, A_SELLER, B_AUCTION, B_PRICE, P_ID, P_NAME, TIME

BATCH = 1024
UTC = datetime.UTC
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)


class _Share(StatelessSourcePartition):
    def __init__(self, events, batch_size: int) -> None:
        self.events = events
        self.batch_size = batch_size

    def next_batch(self):
        batch = list(islice(self.events, self.batch_size))
        if not batch:
            raise StopIteration
        return batch


class GeneratorSource(DynamicSource):
    """Each worker makes its own share of the generator's events."""

    def __init__(self, generator, batch_size: int = BATCH) -> None:
        self.generator = generator
        self.batch_size = batch_size

    def build(self, step_id, worker_index, worker_count):
        return _Share(self.generator.share(worker_index, worker_count), self.batch_size)


class _Counting(StatelessSinkPartition):
    def __init__(self, counts: list) -> None:
        self.counts = counts

    def write_batch(self, items) -> None:
        self.counts[0] += len(items)


class CountSink(DynamicSink):
    """Counts what reaches it (the worker runs in this process)."""

    def __init__(self) -> None:
        self.counts = [0]

    def build(self, step_id, worker_index, worker_count):
        return _Counting(self.counts)


class ListSink(DynamicSink):
    """Keeps what reaches it (for the tests)."""

    def __init__(self) -> None:
        self.items: list = []

    def build(self, step_id, worker_index, worker_count):
        items = self.items

        class Keep(StatelessSinkPartition):
            def write_batch(self, batch) -> None:
                items.extend(batch)

        return Keep()


def _no_system_time() -> datetime.datetime:
    return EPOCH


def _never(timestamp):
    return None  # no wake-ups on the system clock: windows close on new items and at the end


def event_datetime(event) -> datetime.datetime:
    return EPOCH + datetime.timedelta(milliseconds=event[TIME])


class Windows:
    """What the windowed queries share: the clock, and their late streams
    (which must stay empty: results are only exact without late events)."""

    def __init__(self, generator, batch_size: int = BATCH) -> None:
        # Bytewax keeps one watermark per operator, not per input: after a
        # merge (q8's two sides) one side's batch can move it past the other
        # side's next batch, up to a source batch's span of event time apart,
        # hence the slack.
        span_ms = batch_size * 1000 / generator.rate
        self.wait = datetime.timedelta(milliseconds=2 * span_ms)
        self.late: list = []

    def clock(self) -> EventClock:
        # Event time only: by default the watermark also moves on with the
        # system clock while no newer event comes, which made a loaded run
        # find thousands of q5's in-order events late. A replayed stream
        # needs no wall-clock progress (a bounded run closes every window at
        # its end), as ours has none.
        return EventClock(ts_getter=event_datetime, wait_for_system_duration=self.wait,
                          now_getter=_no_system_time, to_system_utc=_never)


# -- the queries -------------------------------------------------------------------


def q0(events, windows):
    return op.filter("bids", events, q.is_bid)


def q1(events, windows):
    return op.map("euros", op.filter("bids", events, q.is_bid), q.in_euros)


def q2(events, windows):
    return op.map("project", op.filter("select", events, q.bid_on_skipped_auction), q.auction_and_price)


def _join_pairs(state, side_value):
    """stateful_flat_map: each new value pairs with the other side's so far."""
    side, value = side_value
    sides = state or ([], [])
    sides[side].append(value)
    if side == 0:
        return sides, [(value, right) for right in sides[1]]
    return sides, [(left, value) for left in sides[0]]


def _suggestion(keyed) -> tuple:
    _, ((name, city, state), auction) = keyed
    return (name, city, state, auction)


def q3(events, windows):
    people = op.key_on("person", op.filter("local", events, q.is_local_seller), lambda p: str(p[P_ID]))
    people = op.map_value("person fields", people, lambda p: (0, q.name_city_state(p)))
    auctions = op.key_on("seller", op.filter("category", events, q.is_suggested_auction),
                         lambda a: str(a[A_SELLER]))
    auctions = op.map_value("auction id", auctions, lambda a: (1, a[A_ID]))
    joined = op.stateful_flat_map("join", op.merge("both", people, auctions), _join_pairs)
    return op.map("suggestion", joined, _suggestion)


class _WinningBid(StatefulLogic):
    """Per auction: its terms (side 0) and its highest bid within them
    (side 1), emitted at the end of the input."""

    def __init__(self, state) -> None:
        self.auction, self.bids = state if state is not None else (None, [])

    def on_item(self, side_value):
        side, value = side_value
        if side == 0:
            self.auction = value
        else:
            self.bids.append(value)
        return (), StatefulLogic.RETAIN

    def on_eof(self):
        auction = self.auction
        if auction is None:
            return (), StatefulLogic.DISCARD
        prices = [price for time, price in self.bids if auction[TIME] <= time <= auction[A_EXPIRES]]
        if not prices:
            return (), StatefulLogic.DISCARD
        return [(auction[A_ID], auction[q.A_CATEGORY], auction[A_SELLER], max(prices),
                 auction[A_EXPIRES])], StatefulLogic.DISCARD

    def snapshot(self):
        return (self.auction, list(self.bids))


def _winning_bids(events):
    auctions = op.key_on("auction", op.filter("auctions", events, q.is_auction), lambda a: str(a[A_ID]))
    auctions = op.map_value("side 0", auctions, lambda a: (0, a))
    bids = op.key_on("bid auction", op.filter("bids", events, q.is_bid), lambda b: str(b[B_AUCTION]))
    bids = op.map_value("side 1", bids, lambda b: (1, (b[TIME], b[B_PRICE])))
    winners = op.stateful("winning bids", op.merge("both", auctions, bids), _WinningBid)
    return op.key_rm("unkey", winners)


def q4(events, windows):
    winners = _winning_bids(events)
    keyed = op.key_on("category", winners, lambda w: str(w[1]))
    pairs = op.map_value("pairs", keyed, lambda w: (w[1], (w[3], 1)))
    totals = op.reduce_final("sum", pairs, lambda a, b: (a[0], q.add_pairs(a[1], b[1])))
    return op.map("mean", op.key_rm("unkey totals", totals), lambda c: (c[0], c[1][0] / c[1][1]))


def _last_closed_averages(keyed) -> list:
    _, closes = keyed
    closes.sort()
    out, prices = [], []
    for _, _, seller, price in closes:
        prices.append(price)
        del prices[: -q.LAST_CLOSED]
        out.append((seller, sum(prices) / len(prices)))
    return out


def q6(events, windows):
    winners = op.key_on("seller", _winning_bids(events), lambda w: str(w[2]))
    closes = op.fold_final("closes", winners, list, _append)
    return op.flat_map("averages", closes, _last_closed_averages)


def _append(acc: list, w) -> list:
    acc.append((w[4], w[0], w[2], w[3]))  # (expires, auction, seller, price): close order
    return acc


def _top(acc, item):
    value, record = item
    if acc is None or value > acc[0]:
        return (value, [record])
    if value == acc[0]:
        acc[1].append(record)
    return acc


def q5(events, windows):
    size, step = q.HOT_WINDOW_MS
    windower = SlidingWindower(length=datetime.timedelta(milliseconds=size),
                               offset=datetime.timedelta(milliseconds=step), align_to=EPOCH)
    counts = count_window("count", op.filter("bids", events, q.is_bid), windows.clock(), windower,
                          key=lambda b: str(b[B_AUCTION]))
    windows.late.append(counts.late)
    # (auction, (window id, n)) -> by window: the top counts, at the end
    per_window = op.map("by window", counts.down,
                        lambda c: (str(c[1][0]), (c[1][1], (int(c[0]), c[1][0] * step / 1000, c[1][1]))))
    tops = op.fold_final("top", per_window, lambda: None, _top)
    return op.flat_map("hot items", tops, lambda kv: kv[1][1])


def _higher(acc, bid):
    record = (bid[B_AUCTION], bid[B_PRICE], bid[q.B_BIDDER], bid[TIME])
    if acc is None or bid[B_PRICE] > acc[0]:
        return (bid[B_PRICE], [record])
    if bid[B_PRICE] == acc[0]:
        acc[1].append(record)
    return acc


def _merge_higher(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return q.higher((a[0], tuple(a[1])), (b[0], tuple(b[1])))


def q7(events, windows):
    keyed = op.key_on("all", op.filter("bids", events, q.is_bid), lambda b: "all")
    windower = TumblingWindower(length=datetime.timedelta(milliseconds=q.TUMBLE_MS), align_to=EPOCH)
    tops = fold_window("highest", keyed, windows.clock(), windower, lambda: None, _higher, _merge_higher,
                       ordered=False)
    windows.late.append(tops.late)
    return op.flat_map("top bids", tops.down, lambda kv: kv[1][1][1])


def q8(events, windows):
    people = op.key_on("person", op.filter("people", events, q.is_person), lambda p: str(p[P_ID]))
    sellers = op.key_on("seller", op.filter("auctions", events, q.is_auction), lambda a: str(a[A_SELLER]))
    windower = TumblingWindower(length=datetime.timedelta(milliseconds=q.TUMBLE_MS), align_to=EPOCH)
    # "first" and "complete": one row per person and window, once both sides came
    joined = join_window("join", windows.clock(), windower, people, sellers, insert_mode="first",
                         emit_mode="complete")
    windows.late.append(joined.late)
    return op.map("new users", joined.down,
                  lambda kv: (kv[1][1][0][P_ID], kv[1][1][0][P_NAME], kv[1][0] * q.TUMBLE_MS / 1000))


QUERIES = {"q0": q0, "q1": q1, "q2": q2, "q3": q3, "q4": q4, "q5": q5, "q6": q6, "q7": q7, "q8": q8}


def run_query(name: str, generator, sink) -> None:
    """Query `name` over the generator's events into `sink`, on one worker."""
    flow = Dataflow(f"nexmark_{name}")
    events = op.input("events", flow, GeneratorSource(generator))
    windows = Windows(generator)
    op.output("out", QUERIES[name](events, windows), sink)
    late = ListSink()
    for i, stream in enumerate(windows.late):
        op.output(f"late {i}", stream, late)
    run_main(flow)
    if late.items:
        raise AssertionError(f"Bytewax {name}: {len(late.items)} events came late, e.g. {late.items[0]}")
