"""Pipelines a user writes, checked with `mypy --strict` by tests/test_typing.py:
this file must type-check clean. Each `assert_type` pins the type a method
gives, so an annotation that loosens (to `Any`) or goes wrong fails the
check; `run_all()` runs the same flows, so the types claimed here are the
records that really come out (tests/test_typing.py calls it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any, TypeGuard, assert_type

from kernel import (
    Collected,
    Dataflow,
    KeyedStream,
    Operator,
    Source,
    Stream,
    WindowedStream,
    WindowResults,
    run,
)
from operators import Session, Sliding, Tumbling, Window  # the alias, as the README writes it

Event = tuple[str, float, int]  # (user, time, amount)
EVENTS: list[Event] = [("ann", 0.1, 4), ("bob", 0.4, 1), ("ann", 0.6, 2), ("ann", 1.3, 5), ("bob", 0.2, 7)]


def event_time(event: Event) -> float:
    return event[1]


def append(values: list[int], value: int) -> list[int]:
    return [*values, value]


def words() -> tuple[Dataflow, Collected[tuple[str, int]], Collected[str]]:
    flow = Dataflow("words")
    lines = flow.from_iterable(["to be", "or not to be"])
    assert_type(lines, Stream[str])
    split = lines.flat_map(str.split)
    assert_type(split, Stream[str])
    keyed = split.key_by(lambda w: w)
    assert_type(keyed, KeyedStream[str, str])
    counts = keyed.count()
    assert_type(counts, KeyedStream[str, int])
    out = counts.collect()
    assert_type(out.items, list[tuple[str, int]])
    lengths = split.map(len).filter(lambda n: n > 2).map(str).inspect(print).collect()
    assert_type(lengths, Collected[str])
    return flow, out, lengths


def aggregates() -> tuple[Dataflow, dict[str, Collected[Any]]]:
    flow = Dataflow("aggregates")
    amounts = flow.from_iterable(EVENTS).key_by(lambda e: e[0]).map_values(lambda e: e[2])
    assert_type(amounts, KeyedStream[str, int])
    total = amounts.sum()
    assert_type(total, KeyedStream[str, int])
    top = amounts.reduce(max)
    assert_type(top, KeyedStream[str, int])
    # A factory (a fresh list per key) and a typed function. (With a lambda,
    # mypy cannot tell which of fold's overloads a class matches: Any.)
    listed = amounts.fold(list, append)
    assert_type(listed, KeyedStream[str, list[int]])
    digits = amounts.fold("", lambda acc, v: acc + str(v))  # a start value
    assert_type(digits, KeyedStream[str, str])
    # A keyed stream is a stream of (key, value) pairs.
    pairs: Stream[tuple[str, int]] = amounts
    labels = pairs.map(lambda kv: f"{kv[0]}={kv[1]}")
    assert_type(labels, Stream[str])
    return flow, {"sum": total.collect(), "max": top.collect(), "list": listed.collect(),
                  "digits": digits.collect(), "labels": labels.collect()}


def windows() -> tuple[Dataflow, dict[str, Collected[Any]]]:
    flow = Dataflow("windows")
    # one event a batch: ("bob", 0.2) comes after ("ann", 1.3) moved the
    # watermark past the window [0, 1): it is late
    events = flow.from_iterable(EVENTS, timestamp=event_time, batch_size=1)
    keyed = events.key_by(lambda e: e[0]).map_values(lambda e: e[2])
    windowed = keyed.window(Tumbling(1.0), late=True)
    assert_type(windowed, WindowedStream[str, int])
    counts = windowed.count()
    assert_type(counts, WindowResults[str, int, int])
    assert_type(windowed.sum(), WindowResults[str, int, int])
    assert_type(windowed.reduce(min), WindowResults[str, int, int])
    assert_type(windowed.fold(list, append), WindowResults[str, int, list[int]])
    assert_type(windowed.fold(0.0, lambda acc, v: acc + v), WindowResults[str, int, float])
    collected = windowed.collect()
    assert_type(collected, WindowResults[str, int, list[int]])
    # (key, window, result) records: the window's bounds are floats
    starts = collected.map(lambda r: (r[0], r[1].start, sum(r[2])))
    assert_type(starts, Stream[tuple[str, float, int]])
    late = counts.late
    assert_type(late, Stream[tuple[str, int]])
    assert_type(counts.late_count.value, int)
    keyed.window(Sliding(2.0, 1.0)).count()
    keyed.window(Session(0.5)).count()
    return flow, {"counts": counts.collect(), "starts": starts.collect(), "late": late.collect()}


def joins() -> tuple[Dataflow, Collected[tuple[str, Window, tuple[str, float]]]]:
    flow = Dataflow("joins")
    clicks = flow.from_iterable([("ann", 0.1), ("bob", 0.4)], timestamp=lambda e: e[1])
    views = flow.from_iterable([("ann", 0.7), ("ann", 1.2)], timestamp=lambda e: e[1])
    left = clicks.key_by(lambda e: e[0]).map_values(lambda e: "click")
    right = views.key_by(lambda e: e[0]).map_values(lambda e: e[1])
    joined = left.join(right, Tumbling(1.0))
    assert_type(joined, WindowResults[str, str | float, tuple[str, float]])
    return flow, joined.collect()


def is_datetime(record: object) -> TypeGuard[datetime]:
    return isinstance(record, datetime)


def share(index: int, peers: int) -> Iterator[int]:
    return iter(range(index, 6, peers))


async def ticks() -> AsyncIterator[datetime]:
    for second in range(3):
        await asyncio.sleep(0)
        yield datetime.fromtimestamp(second, UTC)


class Countdown(Source):
    def open(self, context: Any) -> None:
        self.n = 3

    def poll(self) -> bool:
        self.emit([self.n])
        self.n -= 1
        return self.n > 0


class Doubled(Operator):
    def on_batch(self, port: int, batch: list[Any]) -> None:
        self.emit([2 * r for r in batch])


def scale(stream: Stream[float]) -> Stream[float]:
    """Takes any stream of numbers: a Stream[int] or a Stream[bool] is one."""
    return stream.map(lambda x: x * 1.5)


def sources() -> tuple[Dataflow, dict[str, Collected[Any]]]:
    flow = Dataflow("sources")
    parts = flow.from_partitions(share)
    assert_type(parts, Stream[int])
    stamped = flow.from_async_iterable(ticks, timestamp=lambda t: t)  # a datetime is a timestamp
    assert_type(stamped, Stream[datetime])
    mixed = parts.union(stamped)
    assert_type(mixed, Stream[int | datetime])
    assert_type(mixed.filter(is_datetime), Stream[datetime])  # a TypeGuard narrows
    # mid level: the records' type is the user's to state
    counted: Stream[int] = flow.source(Countdown, name="countdown")
    doubled: Stream[int] = counted.apply(Doubled)
    assert_type(scale(doubled), Stream[float])
    return flow, {"parts": parts.union(doubled).collect(), "mixed": mixed.collect(),
                  "stamps": mixed.filter(is_datetime).collect(),
                  "scaled": scale(doubled).collect()}


def running_total(total: int | None, amount: int) -> tuple[int, int]:
    total = (total or 0) + amount
    return total, total


def stateful() -> tuple[Dataflow, dict[str, Collected[Any]]]:
    """Running state, joins without a window, distinct, top(k)."""
    flow = Dataflow("stateful")
    source = flow.from_iterable(EVENTS, timestamp=event_time)
    amounts = source.key_by(lambda e: e[0]).map_values(lambda e: e[2])
    totals = amounts.stateful_map(running_total)
    assert_type(totals, KeyedStream[str, int])
    running = amounts.count(emit="updates")
    assert_type(running, KeyedStream[str, int])
    times = source.key_by(lambda e: e[0]).map_values(lambda e: e[1])
    pairs = amounts.join(times, ttl=1.0)
    assert_type(pairs.collect().items, list[tuple[str, tuple[int, float]]])
    users = source.map(lambda e: e[0]).distinct()
    assert_type(users.map(str.upper), Stream[str])  # a stream, with its late count:
    assert_type(users.late_count.value, int)
    top = amounts.window(Tumbling(1.0)).top(1)
    assert_type(top, WindowResults[str, int, list[int]])
    return flow, {"totals": totals.collect(), "running": running.collect(), "pairs": pairs.collect(),
                  "users": users.collect(), "top": top.collect(), "distinct": amounts.distinct().collect()}


def run_all() -> dict[str, Any]:
    """Runs every flow above; returns what came out, for the test to compare."""
    found: dict[str, Any] = {}
    flow, counts, lengths = words()
    run(flow)
    found["words"] = (counts.items, lengths.items)
    for build in (aggregates, windows, sources, stateful):
        flow, outs = build()
        run(flow)
        found[flow.name] = {name: out.items for name, out in outs.items()}
    flow, joined = joins()
    run(flow)
    found["joins"] = joined.items
    return found
