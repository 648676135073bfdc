"""The high-level API: `Dataflow`, `Stream`, `KeyedStream`.

Each fluent method is a few lines that add a node built from an operator in
`operators/`. This module is the one place where the kernel package touches
the operator library (DESIGN.md: "one exception, kept thin"); the scheduler,
runtime and launcher never import it.

The streams are generic in their records' types, so a type checker follows
a pipeline through: `Stream[T]` (records of type T), `KeyedStream[K, V]` (a
`Stream[tuple[K, V]]` partitioned by key), `WindowedStream[K, V]` and
`WindowResults[K, V, R]` (a `Stream[tuple[K, Window, R]]`). The streams are
build-time objects: their type parameters cost nothing when records flow.
They are covariant, as a stream only hands its records on: a
`Stream[bool]` is a `Stream[int]`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeGuard, TypeVar, overload

import kernel.operators as ops
from kernel.dataflow._arity import check_arity, check_not_async
from kernel.dataflow._errors import PASSES_THROUGH, KernelError, OperatorError, itself
from kernel.dataflow._graph import Combiner, Edge, Graph, Node, _check_step_name
from kernel.dataflow._loops import KeyedLoopFeedback, LoopFeedback, LoopHead, LoopLeave
from kernel.dataflow._operator import DEFAULT_BATCH_SIZE, Operator, Source
from kernel.scheduling._scheduler import TASK_CLASSES

log = logging.getLogger("kernel")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)  # a stream's records
K_co = TypeVar("K_co", covariant=True)  # a keyed stream's keys
V_co = TypeVar("V_co", covariant=True)  # a keyed stream's values
R_co = TypeVar("R_co", covariant=True)  # a window's result
U = TypeVar("U")  # what a function makes of a record or value
W = TypeVar("W")  # the values of the other side of a join
A = TypeVar("A")  # a fold's accumulator
K = TypeVar("K")  # the keys key_by makes


class _SupportsAdd(Protocol):
    """What `sum()` needs of the values: it starts from the first value
    and adds the next ones with `+` (numbers, strings, lists, timedeltas...).
    `sum()` asks it of `self` (`self: KeyedStream[Any, _SupportsAdd]`), which
    the streams' covariance allows, rather than through a bounded type
    variable: mypy (2.4) does not check the bound of one in a `self`
    annotation, and would let `sum()` of any values through."""

    def __add__(self, other: Any, /) -> Any: ...


# What a `timestamp=` function may return: seconds since the epoch, or a datetime.
Timestamp = float | datetime


def _fn_name(fn: object) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


# -- where event time is lost, found at build time ----------------------------------

# Steps that pass their input's event time on (or, windows and joins, give
# their results the time of their window); everything downstream of a timed
# source through these keeps timestamps.
_KEEPS_TIME = frozenset({
    "Map", "Filter", "FlatMap", "KeyBy", "MapValues", "Inspect", "Union", "WindowAggregate",
    "WindowJoin", "StatefulMap", "KeyedJoin", "Distinct",
    "SelectBatches",  # a window's results beside its late stream (that one: _is_late_stream)
    # a loop's borders pass batches on as they are: its head reads the
    # loop's input and its feedback, so what the feedback carries counts too
    "LoopHead", "LoopEnter", "LoopFeedback", "LoopLeave",
})
# Built-in steps that certainly emit records without event time.
_DROPS_TIME = {
    "IterableSource": "a source without timestamp=",
    "PartitionSource": "a source without timestamp=",
    "AsyncIterableSource": "a source without timestamp=",
    "Count": "a keyed aggregate (its results carry no event time)",
    "Sum": "a keyed aggregate (its results carry no event time)",
    "Reduce": "a keyed aggregate (its results carry no event time)",
    "Fold": "a keyed aggregate (its results carry no event time)",
}


def _is_late_stream(node: Node) -> bool:
    # a window's `.late` side stream: plain (key, value) records
    factory = node.factory
    return (node.kind == ("SelectBatches",) and isinstance(factory, functools.partial)
            and factory.args[:1] == (True,))  # (a windowed join's late_left, late_right: and the side)


def _check_event_time(stream: Stream[Any], step: str, needs: str = "windows need event time",
                      other: Stream[Any] | None = None) -> str | None:
    """Refuse, naming the step, a window over records that certainly carry
    no event time (a source without `timestamp=`, a keyed aggregate, a
    window's late stream on the way). Returns a hint naming the custom steps
    on the way, which may drop it (known only when records flow). A join
    gives its `other` side too: both are checked (a custom step on one side
    left the other unchecked, and an untimed source there was blamed on it
    when records flowed)."""
    return _check_time_from([stream.node] if other is None else [stream.node, other.node], step, needs)


def _check_time_from(nodes: list[Node], step: str, needs: str) -> str | None:
    """`_check_event_time` over what `nodes` emit."""
    lost: list[str] = []
    unknown: list[str] = []
    seen: set[int] = set()
    pending = list(nodes)
    while pending:
        node = pending.pop()
        if node.id in seen:
            continue
        seen.add(node.id)
        kind = node.kind[0] if node.kind else ""
        if kind == "EventTimeSource":
            continue
        if kind in _DROPS_TIME:
            lost.append(f"{node.label}, {_DROPS_TIME[kind]}")
        elif _is_late_stream(node):  # before _KEEPS_TIME: the same kind as the results
            lost.append(f"{node.label}, a window's late events (they carry no event time)")
        elif kind in _KEEPS_TIME:
            pending.extend(edge.source for edge in node.inputs)
        else:
            unknown.append(node.label)
    if lost:
        raise KernelError(
            f"{step}: {needs}, but it is lost on the way at step "
            f"{' and '.join(sorted(lost))}: give the source timestamp=..., and take only what "
            "comes from it through steps that keep event time (map, filter, flat_map, key_by, "
            "map_values, union, window results, stateful_map, join, distinct)")
    if unknown:
        return f"; steps on the way that may drop them: {', '.join(sorted(unknown))}"
    return None


def _recheck_event_time(nodes: list[Node]) -> None:
    """The steps of a loop's body that need event time, checked again once
    its feedback is connected: what it carries is their next round's input,
    which the check made as each step was added could not see (a count fed
    back was found only when records flowed, the error telling to give the
    sources timestamps, which they had)."""
    for node in nodes:
        if node.time_check is not None and node.loop is not None:
            needs, base = node.time_check
            hint = _check_time_from([edge.source for edge in node.inputs], node.label, needs)
            node.factory = _hinted(base, hint)


def _warn_if_never_emitting(node: Node) -> None:
    """An aggregate that emits when its input ends, after a source that
    never ends (follow=True), would never emit: allowed (a run may be
    cancelled and its state kept), but said once, when the flow is built.
    Inside a loop it emits each round's results instead."""
    if node.loop is not None:
        return
    endless = sorted(source.label for source in _upstream(node) if source.endless)
    if endless:
        log.warning("%s: emits its results when its input ends, and %s never end%s (follow=True): "
                    "it will emit nothing; emit='updates' gives each key's value as it changes, "
                    "a window gives results as windows close", node.label, " and ".join(endless),
                    "s" if len(endless) == 1 else "")


def _warn_if_loop_never_runs(graph: Any, scope: Any) -> None:
    """A loop at the top level takes in records without event time when its
    input ends (without max_in_flight): after a source that never ends and
    gives none (follow=True, no timestamp=), it would never run. Allowed,
    as a final aggregate there is, and said once, when the flow is built."""
    if scope.parent is not None or scope.max_in_flight is not None:
        return
    entries = [node for node in graph.nodes if node.loop is scope and node.role in ("head", "enter")]
    untimed = sorted({source.label for entry in entries for source in _upstream(entry)
                      if source.endless and source.kind[:1] != ("EventTimeSource",)})
    if untimed:
        log.warning("%s: takes in records without event time when its input ends, and %s never end%s "
                    "(follow=True): it will emit nothing; give the source timestamp=... (a loop runs as "
                    "the watermark moves) or the loop max_in_flight=N (records without event time then go "
                    "in as they come)", scope.name, " and ".join(untimed), "s" if len(untimed) == 1 else "")


def _refuse_in_loop(stream: Stream[Any], step: str, why: str, instead: str = "put it after the loop") -> None:
    """Refuse, when the flow is built, a step a loop's body cannot hold."""
    loop = stream.flow.graph.scope
    if loop is not None:
        raise KernelError(f"{step}: not inside a loop ({loop.name}): {why}; {instead}")


def _upstream(node: Node) -> list[Node]:
    """Every node `node` reads from, directly or not."""
    seen: dict[int, Node] = {}
    pending = [edge.source for edge in node.inputs]
    while pending:
        at = pending.pop()
        if at.id not in seen:
            seen[at.id] = at
            pending.extend(edge.source for edge in at.inputs)
    return list(seen.values())


def _hinted(factory: Callable[[], Any], hint: str | None) -> Callable[[], Any]:
    """`factory` whose window operator names `hint`'s steps when its records
    come without timestamps."""
    if hint is None:
        return factory

    @functools.wraps(factory, assigned=())
    def make() -> Any:
        op = factory()
        op.time_hint = hint
        return op

    return make  # wraps sets make.__wrapped__: the step's kind is factory's


def _first_field(record: tuple[K, Any, Any]) -> K:
    return record[0]


def _distinct_label(within: ops.Tumbling | None, name: str | None) -> str:
    return name or ("distinct" if within is None else f"distinct within {within!r}")


def _combiner(emit: str, partial: Callable[..., Operator], merge: Callable[[], Operator]) -> Combiner:
    """A keyed aggregate's halves around the exchange. For final results the
    partial half aggregates its kernel's whole input; for updates it hands
    on each batch's partials (`emit="deltas"`), so the owner's updates never
    wait for an input to end."""
    ops.check_emit(emit)
    if emit == "final":
        return Combiner(partial, merge)
    return Combiner(functools.partial(partial, emit="deltas"), merge)


class Collected(Generic[T]):
    """The handle `collect()` returns. After a run, `items` holds every
    record that reached it (from every kernel, kernel 0's first)."""

    def __init__(self, flow: Dataflow, node: Node) -> None:
        # no reference back to the flow: the flow holds its handles, and a
        # cycle would keep a finished flow's results alive until a full GC
        self.node = node
        self.items: list[T] = []

    def __repr__(self) -> str:
        return f"<Collected {self.node.label}: {len(self.items)} items>"


class LateCount:
    """How many events a window found late, over every kernel (read
    `.value` after the run): dropped, or passed on with `late=True`."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.value = 0

    def _deliver(self, values: list[Any]) -> None:
        self.value = sum(v["late"] for v in values if v)

    def __repr__(self) -> str:
        return f"<LateCount {self.node.label}: {self.value}>"


class SkippedCount:
    """How many malformed lines a `from_files(..., on_error="skip")` source
    skipped, over every kernel (read `.value` after the run)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.value = 0

    def _deliver(self, values: list[Any]) -> None:
        self.value = sum(v["skipped"] for v in values if v)

    def __repr__(self) -> str:
        return f"<SkippedCount {self.node.label}: {self.value}>"


class Dataflow:
    """A dataflow graph under construction. Build it, then `run(flow)`.

    >>> from kernel import Dataflow, run
    >>> flow = Dataflow("squares")
    >>> out = flow.from_iterable(range(5)).map(lambda x: x * x).collect()
    >>> run(flow)
    >>> out.items
    [0, 1, 4, 9, 16]
    """

    def __init__(self, name: str = "flow") -> None:
        if not isinstance(name, str):
            # else taken as it was, into logs, errors and the snapshots' fingerprint
            raise TypeError(f"Dataflow(name) takes the flow's name, a str, got {name!r}")
        self.name = name
        self.graph = Graph(name)
        self._collected: list[Collected[Any]] = []
        self._late_counts: list[LateCount] = []
        self._skipped_counts: list[SkippedCount] = []
        self._user_steps: list[Stream[Any]] = []  # apply() and source() streams: their `.results`
        self._file_outputs: dict[str, str] = {}  # to_files: the directory's real path -> the step's label

    def __repr__(self) -> str:
        return f"<Dataflow {self.name!r}: {len(self.graph.nodes)} steps>"

    # -- sources --------------------------------------------------------------

    def from_iterable(
        self,
        iterable: Iterable[T],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timestamp: Callable[[T], Timestamp] | None = None,
        max_delay: float = 0.0,
        name: str | None = None,
    ) -> Stream[T]:
        """A bounded source reading `iterable` in batches of `batch_size`.

        With several kernels each reads a disjoint share (record i goes to
        kernel i % kernels, when that divides the run's key groups: see the
        README's "Several cores"), so the input must be re-iterable (a list,
        a range, a file path reader...).

        `timestamp=fn` gives records event time (`fn(record)`: float seconds
        since the epoch, or a datetime); the watermark is then the largest
        timestamp read so far minus `max_delay` (how far out of order events
        may come).

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> out = flow.from_iterable(["a", "b", "c"], batch_size=2).collect()
        >>> run(flow)
        >>> out.items
        ['a', 'b', 'c']
        """
        ops.check_batch_size(batch_size)
        if not (hasattr(iterable, "__iter__") or hasattr(iterable, "__getitem__")):
            # else an OperatorError from a kernel, once the run had started
            raise TypeError(f"from_iterable() needs an iterable (a list, a range, a generator...), "
                            f"got {iterable!r}")
        factory = ops.IterableSource.factory(iterable, batch_size)  # refuses a 2nd read of an iterator
        return self._timed_source(factory, name or "from_iterable", timestamp, max_delay, None,
                                  ("IterableSource",))

    def from_partitions(
        self,
        make: Callable[[int, int], Iterable[T]],
        *,
        timestamp: Callable[[T], Timestamp] | None = None,
        max_delay: float = 0.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        name: str | None = None,
    ) -> Stream[T]:
        """A bounded source whose kernels each make their own share:
        `make(index, peers)` returns the iterable that kernel `index` (of
        `peers`, numbered across the whole run) reads, in batches of
        `batch_size`, lazily (a generator's records are made as they are
        read). Nothing crosses from the caller to the kernels but `make`:
        each kernel generates, opens or queries only its own part.

        `timestamp` and `max_delay` as for `from_iterable`. After a crash, a
        resumed run calls `make` again and reads past what was handed on, so
        it must return the same share each time.

        >>> from kernel import Dataflow, run
        >>> def share(index, peers):            # kernel k of n: the numbers k, k+n, ...
        ...     return (n * n for n in range(index, 8, peers))
        >>> flow = Dataflow()
        >>> out = flow.from_partitions(share).collect()
        >>> run(flow, cores=2)                  # kernel 0's squares first
        >>> out.items
        [0, 4, 16, 36, 1, 9, 25, 49]
        """
        ops.check_make(make)
        ops.check_batch_size(batch_size)
        factory = functools.partial(ops.PartitionSource, make, batch_size)
        return self._timed_source(factory, name or "from_partitions", timestamp, max_delay, None,
                                  ("PartitionSource",))

    @overload
    def from_files(
        self,
        pattern: str | os.PathLike[str],
        *,
        format: Literal["lines"] = "lines",
        follow: bool = False,
        on_error: str = "raise",
        header: bool = False,
        encoding: str = "utf-8",
        poll_interval: float = 0.1,
        timestamp: Callable[[Any], Timestamp] | None = None,
        max_delay: float = 0.0,
        idle_timeout: float | None = 5.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        chunk_bytes: int = ops.FILE_CHUNK_BYTES,
        name: str | None = None,
    ) -> FileStream[str]: ...

    @overload
    def from_files(
        self,
        pattern: str | os.PathLike[str],
        *,
        format: str,
        follow: bool = False,
        on_error: str = "raise",
        header: bool = False,
        encoding: str = "utf-8",
        poll_interval: float = 0.1,
        timestamp: Callable[[Any], Timestamp] | None = None,
        max_delay: float = 0.0,
        idle_timeout: float | None = 5.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        chunk_bytes: int = ops.FILE_CHUNK_BYTES,
        name: str | None = None,
    ) -> FileStream[Any]: ...

    def from_files(
        self,
        pattern: str | os.PathLike[str],
        *,
        format: str = "lines",
        follow: bool = False,
        on_error: str = "raise",
        header: bool = False,
        encoding: str = "utf-8",
        poll_interval: float = 0.1,
        timestamp: Callable[[Any], Timestamp] | None = None,
        max_delay: float = 0.0,
        idle_timeout: float | None = 5.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        chunk_bytes: int = ops.FILE_CHUNK_BYTES,
        name: str | None = None,
    ) -> FileStream[Any]:
        """The records of the files matching the glob `pattern` (`**` spans
        directories): `format="lines"` gives each line as a `str` (without
        its newline), `"jsonl"` each line decoded as JSON (msgspec; blank
        lines are passed over), `"csv"` each row as a list of `str`, or with
        `header=True` as a dict keyed by the file's first line.

        The files are shared among the kernels by bytes (a kernel reads
        whole files and pieces of large ones, cut at line boundaries) and
        read lazily, a chunk at a time. With a `state_dir`, snapshots hold
        each kernel's byte positions: a resumed run reads each line once.
        A bounded run refuses a pattern that matches no file (here, when
        the flow is built). `follow=True` tails the files and takes on new
        ones (each file whole, on one kernel), looking every
        `poll_interval` seconds: the run then never ends by itself (cancel
        `run_async`, or Ctrl-C).

        `timestamp` and `max_delay` as for `from_iterable`; a followed
        source that reads nothing new for `idle_timeout` seconds is idle
        (as for `from_async_iterable`). `chunk_bytes`: how much each read
        takes (a line longer than that is read whole all the same).

        A malformed line (JSON or CSV that does not parse, bytes that do
        not decode) ends the run with an `OperatorError` naming the file
        and the line number; with `on_error="skip"` it is skipped, logged
        once per file, and counted: `.skipped_count.value` after the run.

        >>> import pathlib, tempfile
        >>> from kernel import Dataflow, run
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.jsonl").write_text('{"n": 1}\\n{"n": 2}\\nnot json\\n')
        >>> flow = Dataflow()
        >>> records = flow.from_files(folder / "*.jsonl", format="jsonl", on_error="skip")
        >>> out = records.map(lambda r: r["n"]).collect()
        >>> run(flow, cores=2)
        >>> sorted(out.items), records.skipped_count.value
        ([1, 2], 1)
        """
        ops.check_batch_size(batch_size)
        checked = ops.check_file_options(pattern, format, on_error, follow, poll_interval, chunk_bytes,
                                         header, encoding)
        ops.check_event_time(timestamp, max_delay, idle_timeout)  # (idle_timeout too, used if follow)
        factory = functools.partial(
            ops.FileSource, checked, format, follow=follow, on_error=on_error, header=header,
            encoding=encoding, poll_interval=poll_interval, chunk_bytes=chunk_bytes, batch_size=batch_size)
        stream = self._timed_source(factory, name or f"from_files({format})", timestamp, max_delay,
                                    idle_timeout if follow else None, ("FileSource", format))
        stream.node.endless = follow
        if not follow:  # cut by size: every kernel cuts at the sizes of one listing
            stream.node.input_listing = functools.partial(ops.list_files, checked)
        files: FileStream[Any] = FileStream(self, stream.node)
        files.skipped_count = SkippedCount(stream.node)
        self._skipped_counts.append(files.skipped_count)
        return files

    def from_async_iterable(
        self,
        aiterable: AsyncIterable[T] | Callable[[], AsyncIterable[T]],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timestamp: Callable[[T], Timestamp] | None = None,
        max_delay: float = 0.0,
        idle_timeout: float | None = 5.0,
        name: str | None = None,
    ) -> Stream[T]:
        """A source reading an async iterable (or a zero-argument callable
        returning one, e.g. an async generator function) on a task.

        `timestamp` and `max_delay` as for `from_iterable`. With timestamps,
        a source that yields nothing for `idle_timeout` seconds (of the
        kernel's clock; None: never) is marked idle: its watermark stops
        holding back windows fed by other sources or kernels, until it
        yields again.

        >>> import asyncio
        >>> from kernel import Dataflow, run
        >>> async def ticks():
        ...     for n in range(3):
        ...         await asyncio.sleep(0)
        ...         yield n
        >>> flow = Dataflow()
        >>> out = flow.from_async_iterable(ticks).map(lambda n: n * 10).collect()
        >>> run(flow)
        >>> out.items
        [0, 10, 20]
        """
        ops.check_batch_size(batch_size)
        if not (hasattr(aiterable, "__aiter__") or callable(aiterable)):
            # else a TypeError from a kernel, once the run had started (what a function
            # returns is known only then)
            raise TypeError("from_async_iterable() needs an async iterable or a function returning one, "
                            f"got {aiterable!r}")
        if not hasattr(aiterable, "__aiter__"):
            check_arity(aiterable, 0, "from_async_iterable", "no arguments")
        factory = ops.AsyncIterableSource.factory(aiterable, batch_size)
        return self._timed_source(
            factory, name or "from_async_iterable", timestamp, max_delay, idle_timeout,
            ("AsyncIterableSource",)
        )

    def from_redis_stream(
        self,
        url: str,
        stream: str | Sequence[str],
        *,
        follow: bool = False,
        start: str = "0",
        decode: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timeout: float = 5.0,
        timestamp: Callable[[ops.RedisEntry], Timestamp] | None = None,
        max_delay: float = 0.0,
        idle_timeout: float | None = 5.0,
        name: str | None = None,
    ) -> Stream[ops.RedisEntry]:
        """Entries of the Redis stream `stream` (or of several: kernel `i`
        of `n` reads `streams[i::n]`; one stream is read by kernel 0) at
        `url` (`redis://host:port/db`), as `RedisEntry(stream, id, fields)`
        records, read with `XREAD` in batches of `batch_size` on the
        kernel's loop (redis-py's asyncio client: `pip install
        'streamkernel[redis]'`).

        From the entry after `start` (an entry id; "0": the beginning, "$":
        what comes after the run starts). With `follow=False` the read ends
        at the entry that was last in each stream when the run started;
        with `follow=True` it waits for new entries, forever. The position
        in each stream (the id last handed on) is in epoch snapshots: a
        resumed run goes on after it, so with `to_files` every entry is
        written exactly once. `decode=False` gives the fields as bytes.
        `timeout` (seconds) bounds connecting and every reply: an unreachable
        server is an error, not a hang. `timestamp=lambda e: e.time` gives
        the entries event time (when Redis added them); `max_delay` and
        `idle_timeout` as for `from_async_iterable`.

        >>> from kernel import Dataflow, run
        >>> url = redis_url  # a running server's, e.g. "redis://localhost:6379/0"
        >>> flow = Dataflow()
        >>> flow.from_iterable([{"user": "ann"}, {"user": "bob"}]).to_redis_stream(url, "logins")
        >>> run(flow)
        >>> flow = Dataflow()
        >>> users = flow.from_redis_stream(url, "logins").map(lambda e: e.fields["user"]).collect()
        >>> run(flow)
        >>> users.items
        ['ann', 'bob']
        """
        ops.check_batch_size(batch_size)
        ops.check_redis_installed()
        if not isinstance(stream, str):  # (an iterator of names read once, here; None refused below)
            try:
                stream = list(stream)
            except TypeError:
                pass
        factory = functools.partial(ops.RedisStreamSource, url, stream, batch_size, follow=follow,
                                    start=start, decode=decode, timeout=timeout)
        checked = factory()  # the arguments are checked here, when the flow is built
        label = name or f"from_redis_stream({','.join(checked.all_streams)})"
        entries = self._timed_source(factory, label, timestamp, max_delay, idle_timeout,
                                     ("RedisStreamSource",))
        entries.node.endless = follow
        entries.node.cut_on_resume = (checked.cut_on_resume if timestamp is None else
                                      ops.EventTimeSource.of_inner(checked.cut_on_resume))
        entries.node.resume_record = list(checked.all_streams)
        return entries

    def _timed_source(
        self,
        factory: Callable[[], Source],
        name: str,
        timestamp: Callable[[Any], Timestamp] | None,
        max_delay: float,
        idle_timeout: float | None,
        kind: tuple[str, ...],
    ) -> Stream[Any]:
        if timestamp is None:
            # idle_timeout is checked though unused: a bad one was met only once timestamp= came
            ops.check_event_time(timestamp, max_delay, idle_timeout)
            return self._source(factory, name, kind)
        ops.check_event_time(timestamp, max_delay, idle_timeout)

        def timed() -> Source:
            return ops.EventTimeSource(factory(), timestamp, max_delay, idle_timeout)

        return self._source(timed, name, ("EventTimeSource", *kind))

    def subscribe(self, name: str, *, timeout: float | None = None, on_lost: str = "fail",
                  record_type: type | None = None) -> Stream[Any]:
        """The records another running job publishes as topic `name`
        (`stream.publish`), from the publisher's next whole epoch on, with
        its event time and watermarks, spread over this job's kernels
        (partition p on kernel p mod n). Waits up to `timeout` seconds (None:
        for ever) for the topic to appear in the coordinator's catalog
        (`run(flow, coordinator=...)` or KERNEL_COORDINATOR). The stream ends
        when the publisher ends it; a publisher that dies raises
        `kernel.topics.PublisherLost` (`on_lost="fail"`) or is waited for
        (`on_lost="wait"`: the restarted publisher's next whole epoch on).
        `record_type` given and unlike the topic's: `TopicError` at once.
        Without a coordinator it says what is missing:

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> readings = flow.subscribe("readings", timeout=5).collect()
        >>> run(flow)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        kernel.dataflow._errors.OperatorError: ... TopicError: topics and services need a coordinator, ...
        """
        from kernel.topics import _api

        return self._source(_api.subscriber(self, name, timeout, on_lost, record_type), f"subscribe({name})",
                            ("EventTimeSource", "Subscribe"))

    def serve(self, name: str, handler: Callable[[Any], Any]) -> None:
        """Serve requests under `name` on this job's kernel 0: `handler(request)`
        (a function or a coroutine function) returns the reply; request and
        reply are msgspec-encodable. Call it with `kernel.services`. A job
        that serves runs until it is killed; it needs a coordinator:

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> flow.serve("square", lambda n: n * n)
        >>> run(flow)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        kernel.scheduling._errors.TaskError: ... TopicError: topics and services need a coordinator, ...
        """
        from kernel.topics import _api

        self._source(_api.server(self, name, handler), f"serve({name})", ("Serve",))
        _api.claim(self, name, "serve")

    def source(self, factory: Callable[[], Source], *, name: str) -> Stream[Any]:
        """A mid-level source: `factory()` returns a fresh `Source` per kernel.
        Its records' type is not known (`Stream[Any]`): annotate the result
        (`stream: Stream[int] = flow.source(...)`) to have it checked from there.

        >>> from kernel import Dataflow, Source, run
        >>> class Countdown(Source):
        ...     def open(self, context):
        ...         self.n = 3
        ...     def poll(self):
        ...         self.emit([self.n])
        ...         self.n -= 1
        ...         return self.n > 0      # False: exhausted
        >>> flow = Dataflow()
        >>> out = flow.source(Countdown, name="countdown").collect()
        >>> run(flow)
        >>> out.items
        [3, 2, 1]
        """
        if isinstance(factory, Operator):
            raise TypeError("pass a factory (the Source class or a function), not an instance")
        return self._user_step(self._source(factory, name, None))

    def _user_step(self, stream: Stream[Any]) -> Stream[Any]:
        """`stream` of an operator of the user's own (`apply`, `source`):
        its kernels' `result()` values are its `.results` after a run
        (they were gathered, then dropped: no handle reached them)."""
        stream.results = []
        self._user_steps.append(stream)
        return stream

    def _source(self, factory: Callable[[], Source], name: str, kind: tuple[str, ...] | None) -> Stream[Any]:
        node = _labelled(self.graph.add(name, _checked(factory, Source, name), is_source=True, kind=kind))
        return Stream(self, node)

    def _results_delivered(self, per_kernel: list[dict[int, Any]]) -> None:
        for stream in self._user_steps:  # each kernel's result() that is not None, in kernel order
            stream.results = [results[stream.node.id] for results in per_kernel if stream.node.id in results]
        for handle in self._collected:
            # `extend` per kernel, not a comprehension over every item: the
            # caller waits for this after the run (126,000 window results:
            # ~8 ms -> ~1 ms)
            items: list[Any] = []
            for results in per_kernel:
                items.extend(results.get(handle.node.id, ()))
            handle.items = items
        for count in self._late_counts:
            count._deliver([results.get(count.node.id) for results in per_kernel])
        for skipped in self._skipped_counts:
            skipped._deliver([results.get(skipped.node.id) for results in per_kernel])


# The handlers the runtime calls and does not await.
_SYNC_HANDLERS = ("open", "on_batch", "on_watermark", "on_end", "on_idle", "on_round", "on_timer",
                  "on_epoch", "on_commit")


def _refuse_async_handlers(op: Operator, name: str) -> None:
    """An `async def` handler returns a coroutine that nothing awaits: its
    records were dropped without a word (on_batch, on_watermark), the run
    failed later with an AttributeError blamed on another handler (open,
    on_end), or, a source's poll, never ended (a coroutine is true: "poll
    again"). Refused when the operator is made, once per kernel."""
    for handler in (*_SYNC_HANDLERS, "poll") if isinstance(op, Source) else _SYNC_HANDLERS:
        if inspect.iscoroutinefunction(getattr(op, handler, None)):
            hint = (" (to wait for work of its own, on_end may return a task: asyncio.ensure_future(...))"
                    if handler == "on_end" else
                    " (for I/O, spawn a task with self.context.kernel.spawn(...) that fills a buffer and "
                    "calls self.wake(); poll emits what is there)" if handler == "poll" else "")
            raise TypeError(f"{name}: {type(op).__name__}.{handler} is async, but the kernel calls "
                            f"it without awaiting it: make it a plain method{hint}")


# How each step calls its function: (positional arguments, what they are)
_CALLED_WITH = {"map": (1, "one record"), "filter": (1, "one record"), "flat_map": (1, "one record"),
                "inspect": (1, "one record"), "key_by": (1, "one record"), "sink": (1, "one record"),
                "map_values": (1, "one value"), "reduce": (2, "two values (a, b)"),
                "fold": (2, "the accumulator and a value"), "stateful_map": (2, "the state and a value")}


def _function(fn: Any, method: str) -> Any:
    """`fn`, checked where the flow is built: a value that is not callable
    otherwise got through to the run, which failed when it opened the
    operator, naming no step and calling the method "flatmap", "keyby"; a
    coroutine function's coroutines were dropped, never awaited (a sink's
    records lost without an error); a signature that cannot take the
    step's arguments failed only once records flowed."""
    if not callable(fn):
        raise TypeError(f"{method}() needs a function, got {fn!r}")
    check_not_async(fn, method)
    count, called_with = _CALLED_WITH[method]
    check_arity(fn, count, method, called_with)
    return fn


def _check_task_class(task_class: object, name: str) -> None:
    """An operator's `task_class`: another value failed as a bare KeyError
    ('urgent') inside the scheduler when the run started."""
    if task_class not in TASK_CLASSES:
        raise ValueError(f"{name}: task_class must be {' or '.join(map(repr, TASK_CLASSES))}, "
                         f"got {task_class!r}")


def _checked(factory: Callable[[], Operator], kind: type[Operator], name: str) -> _CheckedFactory:
    if isinstance(factory, type):
        # a class of the wrong kind, known now: it failed only when the run made
        # it ("factory returned {}, not a Operator"), or a Source given to apply()
        # in on_batch ("has no inputs")
        method = "source" if kind is Source else "apply"
        if not issubclass(factory, Operator):
            raise TypeError(f"{method}({factory.__name__}): {factory.__name__} is not a {kind.__name__} "
                            f"class (a subclass of kernel.{kind.__name__}) or a function returning one")
        if kind is Source and not issubclass(factory, Source):
            raise TypeError(f"source({factory.__name__}): {factory.__name__} is an Operator, not a Source "
                            "(apply() takes operators)")
        if kind is not Source and issubclass(factory, Source):
            raise TypeError(f"apply({factory.__name__}): {factory.__name__} is a Source; apply() takes an "
                            "Operator (flow.source() takes sources)")
    # the class: its task_class is known now, when the flow is built, unless the class
    # computes it (a property) or holds it in a slot: then its instance tells
    task_class = getattr(factory, "task_class", None) if isinstance(factory, type) else None
    if task_class is not None and not inspect.isdatadescriptor(task_class):
        _check_task_class(task_class, name)
    return _CheckedFactory(factory, kind, name)


class _CheckedFactory:
    """A user's factory (`apply`, `source`), what it makes checked, and its
    failure named by `step` (the step's label, once the graph has numbered
    it: `_labelled`)."""

    def __init__(self, factory: Callable[[], Operator], kind: type[Operator], name: str) -> None:
        self.factory, self.kind, self.name = factory, kind, name
        self.step = name
        self.__doc__ = factory.__doc__
        self.__wrapped__ = factory  # the step's kind is factory's (_graph.factory_kind)

    def __call__(self) -> Operator:
        factory, kind, name = self.factory, self.kind, self.name
        try:
            op = factory()
        except PASSES_THROUGH:
            raise
        except BaseException as exc:  # raised bare, it named no step (a Stop(BaseException) too)
            raise OperatorError.wrap(self.step, factory, exc, has_record=False) from exc
        if not isinstance(op, kind):
            raise TypeError(f"{name}: factory returned {op!r}, not a {kind.__name__}")
        _check_task_class(op.task_class, name)
        _refuse_async_handlers(op, name)
        if kind is Operator:
            op._emit_checked = True  # its emit checks that it is given a batch (the runtime)
        return op


def _labelled(node: Node) -> Node:
    """`node`, its factory (a `_CheckedFactory`) told the step's label
    (`name (step N)`) for the errors it names."""
    factory = node.factory
    if isinstance(factory, _CheckedFactory):
        factory.step = node.label
    return node


class Stream(Generic[T_co]):
    """A stream of records of type `T_co` in a `Dataflow`."""

    _exchange_out = False
    #: (a stream of `apply()` or `source()`) each kernel's `result()` that is
    #: not None, in kernel order, after a run (on a cluster, on process 0)
    results: list[Any]

    def __init__(self, flow: Dataflow, node: Node) -> None:
        self.flow = flow
        self.node = node

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.node.label}>"

    if not TYPE_CHECKING:  # (a type checker reports these itself, before anything runs)
        def __getattr__(self, name: str) -> Any:
            """Only for a name not found (or a property that raised
            AttributeError): a keyed stream's method asked of a stream not
            keyed says so (it was Python's bare AttributeError)."""
            for klass in type(self).__mro__:  # a property that raised AttributeError: its own word
                found = vars(klass).get(name)
                if isinstance(found, property):
                    return found.__get__(self, type(self))
            message = f"{type(self).__name__!r} object has no attribute {name!r}"
            if not name.startswith("_") and callable(getattr(KeyedStream, name, None)):
                message += f": {name}() is for a keyed stream (key_by first)"
            raise AttributeError(message, name=name, obj=self)

    def _edge(self, port: int = 0) -> Edge:
        return Edge(self.node, port, self._exchange_out)

    def _then(self, name: str, factory: Callable[[], Operator]) -> Node:
        return self.flow.graph.add(name, factory, [self._edge()])

    def apply(
        self,
        factory: Callable[[], Operator],
        *,
        name: str | None = None,
        inputs: Sequence[Stream[Any]] = (),
    ) -> Stream[Any]:
        """A mid-level operator: `factory()` returns a fresh `Operator` per
        kernel. Extra `inputs` streams arrive on ports 1, 2, ... What it
        emits is not known (`Stream[Any]`): annotate the result to have it
        checked from there.

        >>> from kernel import Dataflow, Operator, run
        >>> class Tagged(Operator):
        ...     def on_batch(self, port, batch):
        ...         self.emit([(port, r) for r in batch])
        >>> flow = Dataflow()
        >>> a, b = flow.from_iterable(["x"]), flow.from_iterable(["y"])
        >>> out = a.apply(Tagged, inputs=(b,)).collect()
        >>> run(flow)
        >>> sorted(out.items)
        [(0, 'x'), (1, 'y')]
        """
        # Checked here, where the flow is built: an instance, a lone stream as
        # `inputs` or a list among them otherwise failed as a bare TypeError
        # or AttributeError ("'list' object has no attribute 'flow") from
        # inside the library, at once or when the run opened the operator.
        if isinstance(factory, Operator) or not callable(factory):
            raise TypeError(f"apply needs a factory (the Operator class or a function returning "
                            f"an Operator), not {factory!r}")
        if isinstance(inputs, Stream):
            raise TypeError(f"inputs= takes a sequence of streams: inputs=({inputs!r},)")
        label = name or _fn_name(factory)
        streams = (self, *inputs)
        for other in inputs:
            if not isinstance(other, Stream):
                raise TypeError(f"{label}: an input must be a Stream of this dataflow, got {other!r}")
            if other.flow is not self.flow:
                raise ValueError(f"{other!r} belongs to another dataflow")
        edges = [s._edge(port) for port, s in enumerate(streams)]
        node = _labelled(self.flow.graph.add(label, _checked(factory, Operator, label), edges))
        return self.flow._user_step(Stream(self.flow, node))

    def map(self, fn: Callable[[T_co], U], *, name: str | None = None) -> Stream[U]:
        """`fn(record)` for every record.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> out = flow.from_iterable([1, 2, 3]).map(lambda x: x * 2).collect()
        >>> run(flow)
        >>> out.items
        [2, 4, 6]
        """
        factory = functools.partial(ops.Map, _function(fn, "map"))
        return Stream(self.flow, self._then(name or f"map({_fn_name(fn)})", factory))

    @overload
    def filter(self, fn: Callable[[T_co], TypeGuard[U]], *, name: str | None = None) -> Stream[U]: ...

    @overload
    def filter(self, fn: Callable[[T_co], object], *, name: str | None = None) -> Stream[T_co]: ...

    def filter(self, fn: Callable[[Any], object], *, name: str | None = None) -> Stream[Any]:
        """The records for which `fn(record)` is true. (A `TypeGuard[U]`
        function narrows the type: `Stream[U]`.)

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> out = flow.from_iterable(range(10)).filter(lambda x: x % 3 == 0).collect()
        >>> run(flow)
        >>> out.items
        [0, 3, 6, 9]
        """
        factory = functools.partial(ops.Filter, _function(fn, "filter"))
        return Stream(self.flow, self._then(name or f"filter({_fn_name(fn)})", factory))

    def flat_map(self, fn: Callable[[T_co], Iterable[U]], *, name: str | None = None) -> Stream[U]:
        """Every item of the iterable `fn(record)`, for every record.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> out = flow.from_iterable(["to be", "or not"]).flat_map(str.split).collect()
        >>> run(flow)
        >>> out.items
        ['to', 'be', 'or', 'not']
        """
        factory = functools.partial(ops.FlatMap, _function(fn, "flat_map"))
        return Stream(self.flow, self._then(name or f"flat_map({_fn_name(fn)})", factory))

    def inspect(self, fn: Callable[[T_co], object], *, name: str | None = None) -> Stream[T_co]:
        """Calls `fn(record)` for its side effect; the records pass unchanged.

        >>> from kernel import Dataflow, run
        >>> seen = []
        >>> flow = Dataflow()
        >>> out = flow.from_iterable([1, 2]).inspect(seen.append).map(str).collect()
        >>> run(flow)
        >>> seen, out.items
        ([1, 2], ['1', '2'])
        """
        factory = functools.partial(ops.Inspect, _function(fn, "inspect"))
        return Stream(self.flow, self._then(name or f"inspect({_fn_name(fn)})", factory))

    def key_by(self, fn: Callable[[T_co], K], *, name: str | None = None) -> KeyedStream[K, T_co]:
        """`(fn(record), record)` pairs, each sent to the kernel that owns its key.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> out = flow.from_iterable(["apple", "avocado", "banana"]).key_by(lambda w: w[0]).collect()
        >>> run(flow)
        >>> out.items
        [('a', 'apple'), ('a', 'avocado'), ('b', 'banana')]
        """
        factory = functools.partial(ops.KeyBy, _function(fn, "key_by"))
        return KeyedStream(self.flow, self._then(name or f"key_by({_fn_name(fn)})", factory))

    def union(self, *others: Stream[U], name: str | None = None) -> Stream[T_co | U]:
        """The records of this stream and of `others`, merged (streams of
        other types give a stream of either).

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> evens, odds = flow.from_iterable([0, 2]), flow.from_iterable([1, 3])
        >>> out = evens.union(odds).collect()
        >>> run(flow)
        >>> sorted(out.items)
        [0, 1, 2, 3]
        """
        return self.apply(ops.Union, name=name or "union", inputs=others)

    def broadcast(self, *, name: str | None = None) -> Stream[T_co]:
        """Every record of this stream on every kernel: each kernel's next
        step gets the records of all kernels (a keyed stream's pairs too,
        which are then on every kernel, not only on their key's owner). On
        one kernel the records pass as they are.

        For a small stream that every kernel needs whole beside its own
        share of a large one: a join with a table of a few thousand rows,
        rules or settings that change. It crosses `(kernels - 1) x` the small
        stream's records, where a `key_by` on both sides crosses most of the
        large one's. Watermarks, IDLE and the end of input go with the
        records, as on an exchange. State a step keeps of broadcast records
        is on every kernel, so a flow with `broadcast()` resumes from a
        state_dir only on as many kernels as wrote it.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> out = flow.from_iterable(["x"]).broadcast().collect()
        >>> run(flow, cores=2)
        >>> out.items
        ['x', 'x']
        """
        label = name or "broadcast"
        node = self.flow.graph.add(label, ops.Union, [Edge(self.node, 0, broadcast=True)],
                                   kind=("Broadcast",))
        return Stream(self.flow, node)

    def distinct(
        self, *, within: ops.Tumbling | None = None, name: str | None = None
    ) -> DistinctStream[T_co]:
        """Each record the first time it comes, at once (records must be
        hashable; equal records meet on the kernel that owns them). With
        `within=Tumbling(size)`, the first in each window of event time; a
        window's records are forgotten once the watermark passes its end,
        and a record whose window has ended is late: dropped, logged, and
        counted in `.late_count.value` (after the run). The output keeps
        the records' event time.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> out = flow.from_iterable(["b", "a", "b", "c", "a"]).distinct().collect()
        >>> run(flow)
        >>> out.items
        ['b', 'a', 'c']
        """
        label = _distinct_label(within, name)
        stream: DistinctStream[T_co] = self.key_by(itself, name=f"{label}: by record")._distinct(
            label, within, values_only=True)
        return stream

    def collect(self, *, name: str | None = None) -> Collected[T_co]:
        """Gather every record back to the caller: read `.items` after the run.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> out = flow.from_iterable(range(6)).collect()
        >>> run(flow, cores=2)                 # every kernel's share, kernel 0's first
        >>> out.items
        [0, 2, 4, 1, 3, 5]
        """
        node = self.flow.graph.add(name or "collect", ops.Collect, [self._edge()])
        handle: Collected[T_co] = Collected(self.flow, node)
        self.flow._collected.append(handle)
        return handle

    def sink(self, fn: Callable[[T_co], object], *, name: str | None = None) -> None:
        """Calls `fn(record)` for every record, on the kernel that holds it.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> flow.from_iterable(["hello", "sink"]).sink(print)
        >>> run(flow)
        hello
        sink
        """
        factory = functools.partial(ops.Sink, _function(fn, "sink"))
        self.flow.graph.add(name or f"sink({_fn_name(fn)})", factory, [self._edge()])

    def to_files(self, directory: str | os.PathLike[str], *, name: str | None = None) -> None:
        """Writes every record to JSON Lines files in `directory` (tuples and
        windows as arrays, a dict's int, float, bool or None keys as their
        JSON text: `{1: "a"}` reads back `{"1": "a"}`), one file per kernel
        and epoch. With a
        `state_dir`, a file becomes visible (renamed from a hidden name) only
        once its epoch is complete on every kernel, so after a crash and a
        resumed run the visible files hold every record exactly once.
        Without a `state_dir` the files appear when the run ends, so after a
        source that never ends (`follow=True`) a run without a `state_dir`
        is refused when it starts. Use one directory per `to_files`.

        >>> import json, pathlib, tempfile
        >>> from kernel import Dataflow, run
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "out"
        >>> flow = Dataflow()
        >>> flow.from_iterable([("a", 1), ("b", 2)]).to_files(out)
        >>> run(flow)
        >>> [f.name for f in out.iterdir()]
        ['part-k0-e00000001.jsonl']
        >>> [json.loads(line) for line in (out / "part-k0-e00000001.jsonl").read_text().splitlines()]
        [['a', 1], ['b', 2]]
        """
        if not isinstance(directory, (str, os.PathLike)):
            # else os.fspath's bare TypeError when the run opened the sink
            raise TypeError(f"to_files needs a directory's path (a str or a Path), got {directory!r}")
        path = os.fspath(directory)
        if not path:
            raise ValueError("to_files needs a directory's path, got an empty one")
        # Two into one directory wrote the same file names, each over the
        # other's: the run failed at its end (a hidden file renamed away), with
        # a state_dir after publishing a mix of both
        where = os.path.realpath(path)
        written = self.flow._file_outputs
        label = name or f"to_files({directory})"
        in_the_way = ops.file_in_the_way(path)
        if in_the_way is not None:
            raise ValueError(f"{label}: {in_the_way}")
        if where in written:
            raise ValueError(f"{label}: the directory {path} is already written by {written[where]}; give "
                             "each to_files a directory of its own")
        edge = self._edge()
        # sources that never end (follow=True) before it: without a state_dir its
        # files would appear only at an end that never comes (refused at run start)
        endless = sorted({node.label for node in [edge.source, *_upstream(edge.source)] if node.endless})
        factory = functools.partial(ops.ToFiles, directory, after_endless=endless)
        self.flow.graph.add(label, factory, [edge])
        written[where] = label

    def to_redis_stream(
        self,
        url: str,
        stream: str,
        *,
        maxlen: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timeout: float = 5.0,
        name: str | None = None,
    ) -> None:
        """Appends every record to the Redis stream `stream` at `url` with
        `XADD` (ids assigned by Redis), pipelined in batches of
        `batch_size` on the kernel's loop. A record is a non-empty dict of
        fields to str, bytes, int or float values, or a `RedisEntry` (its
        fields are copied). `maxlen` trims the stream to about that many
        entries (`MAXLEN ~`). At least once: after a crash, a resumed run
        adds again what Redis had not acknowledged at the last complete
        epoch, so some entries may come twice. The run ends once Redis
        has acknowledged every entry.

        >>> import redis
        >>> from kernel import Dataflow, run
        >>> url = redis_url  # a running server's, e.g. "redis://localhost:6379/0"
        >>> flow = Dataflow()
        >>> flow.from_iterable([{"n": 1}, {"n": 2}, {"n": 3}]).to_redis_stream(url, "numbers")
        >>> run(flow)
        >>> [fields for _id, fields in redis.Redis.from_url(url).xrange("numbers")]
        [{b'n': b'1'}, {b'n': b'2'}, {b'n': b'3'}]
        """
        ops.check_redis_installed()
        factory = functools.partial(ops.ToRedisStream, url, stream, batch_size, maxlen=maxlen,
                                    timeout=timeout)
        factory()  # the arguments are checked here, when the flow is built
        self.flow.graph.add(name or f"to_redis_stream({stream})", factory, [self._edge()])

    def publish(self, name: str, *, partitions: str = "per-kernel", retain: int | None = None,
                slow: str = "backpressure", epoch_interval: float = 1.0,
                record_type: type | None = None, retain_bytes: int | None = None) -> None:
        """Publish this stream as topic `name` while the job runs: other
        jobs `flow.subscribe(name)` to it (see README "Topics between
        jobs"). `partitions`: "per-kernel" (each kernel serves its share) or
        "merged" (kernel 0 serves everything); `retain=N` keeps the last N
        epochs for late subscribers, at most `retain_bytes` of them (64 MiB
        by default: the oldest epochs are dropped whole; in a job with a
        state_dir it bounds too what is kept for subscribers away); `slow`:
        "backpressure" (a slow subscriber slows this job) or "disconnect"
        (it is dropped);
        `epoch_interval`: seconds between the topic's epoch boundaries;
        `record_type`: the records' class, registered and checked. It needs
        a coordinator (`run(flow, coordinator="HOST:PORT")`):

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> flow.from_iterable(range(3)).publish("numbers", retain=2)
        >>> run(flow)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        kernel.scheduling._errors.TaskError: ... TopicError: topics and services need a coordinator, ...
        """
        from kernel.topics import _api

        stream, factory = _api.publisher(self, name, partitions, retain, slow, epoch_interval, record_type,
                                         retain_bytes)
        stream.flow.graph.add(f"publish({name})", factory, [stream._edge()])
        _api.claim(stream.flow, name, "publish")

    def print(self, prefix: str = "", *, name: str | None = None) -> None:
        """Writes every record to stdout, one line each, after `prefix`.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> flow.from_iterable([1, (2, "two")]).print("got: ")
        >>> run(flow)
        got: 1
        got: (2, 'two')
        """
        if not isinstance(prefix, str):  # else written with str(): print(5) wrote "51" for the record 1
            raise TypeError(f"print(prefix) takes a str, written before each record, got {prefix!r}")
        self.flow.graph.add(name or "print", functools.partial(ops.Print, prefix), [self._edge()])


    def iterate(
        self,
        body: Callable[[Any], tuple[Stream[Any], Stream[Any]]],
        *,
        max_rounds: int | None = None,
        max_in_flight: int | None = None,
        name: str | None = None,
    ) -> Any:
        """A loop: `body(loop_input)` builds the steps of one round and
        returns `(feedback, out)`. Round 0's `loop_input` is this stream's
        records; round r+1's is what `feedback` carried in round r. `out`
        leaves the loop: the result is the union of `out` over every round.
        The loop ends when a round feeds nothing back, on every kernel, or
        after `max_rounds` rounds (what the last one feeds back is dropped).
        With `max_in_flight=N` (Faucet's flow control, a loop at the top
        level only), each kernel lets at most N of this stream's records
        into a run; the others wait at the loop's entry for the next runs,
        and the kernel's sources pause while N wait there that runs will
        take in, so what circulates and what waits stay bounded (records
        without event time go in as they come, not at the end of input).

        Inside `body`, streams from outside the loop may be used (joined,
        unioned): their records enter in round 0, and operators keep their
        state from round to round (a join keeps them). A keyed aggregate
        (`count`, `sum`, `reduce`, `fold`) emits once per round, when the
        round is complete on every kernel, over that round's records. Loops
        nest. See "## Loops" in the README.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> def halve(numbers):
        ...     halved = numbers.filter(lambda n: n > 1).map(lambda n: n // 2)
        ...     return halved, halved
        >>> out = flow.from_iterable([8, 3]).iterate(halve).collect()
        >>> run(flow, cores=2)
        >>> sorted(out.items)
        [1, 1, 2, 4]
        """
        for option, value in (("max_rounds", max_rounds), ("max_in_flight", max_in_flight)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{option} must be a positive int or None, got {value!r}")
        if not callable(body):
            raise TypeError(f"iterate needs a callable body(loop_input) -> (feedback, out), got {body!r}")
        label = name or f"iterate({_fn_name(body)})"
        graph = self.flow.graph
        if max_in_flight is not None and graph.scope is not None:
            # an inner loop's runs take in what a round of the outer one
            # brings, all at once: the outer loop's max_in_flight bounds it
            raise ValueError(f"{label}: max_in_flight bounds a loop at the top level only; this one is "
                             f"inside {graph.scope.name} (give max_in_flight to that loop)")
        steps = len(graph.nodes)
        scope = graph.open_loop(label, max_rounds, max_in_flight)
        try:
            head = graph.add(f"{label}: input", LoopHead, [Edge(self.node, 0)], kind=("LoopHead",),
                             loop=scope, role="head")
            loop_input = self._like(head, exchange=self._exchange_out or isinstance(self, KeyedStream))
            result = body(loop_input)
            if not (isinstance(result, tuple) and len(result) == 2
                    and all(isinstance(s, Stream) and s.flow is self.flow for s in result)):
                raise TypeError(f"{label}: body must return (feedback, out), two streams of this "
                                f"dataflow, got {result!r}")
            feedback, out = result
            back = graph.add(f"{label}: feedback",
                             KeyedLoopFeedback if isinstance(self, KeyedStream) else LoopFeedback,
                             [Edge(feedback.node, 0)], kind=("LoopFeedback",), loop=scope, role="feedback")
            graph.connect_feedback(head, back)
            _recheck_event_time(graph.nodes[steps:])
        except BaseException:
            graph.abandon_loop(scope, steps)
            raise
        graph.close_loop(scope)
        _warn_if_loop_never_runs(graph, scope)
        leave = graph.add(f"{label}: out", LoopLeave, [Edge(out.node, 0)], kind=("LoopLeave",),
                          loop=scope, role="leave")
        return out._like(leave, exchange=out._exchange_out)

    def _like(self, node: Node, *, exchange: bool) -> Any:
        """A stream of this one's kind (keyed or not) over `node`'s records."""
        stream: Stream[Any] = (KeyedStream if isinstance(self, KeyedStream) else Stream)(self.flow, node)
        stream._exchange_out = exchange
        return stream


class KeyedStream(Stream[tuple[K_co, V_co]], Generic[K_co, V_co]):
    """A stream of `(key, value)` pairs, partitioned by key across kernels."""

    _exchange_out = True

    def _keyed(
        self, name: str, factory: Callable[[], Operator], combiner: Combiner | None = None,
        emit: str | None = None,
    ) -> KeyedStream[K_co, Any]:
        node = self.flow.graph.add(name, factory, [self._edge()], combiner=combiner)
        if emit == "final":
            _warn_if_never_emitting(node)
        stream: KeyedStream[K_co, Any] = KeyedStream(self.flow, node)
        stream._exchange_out = False  # already on the kernel that owns the key
        return stream

    def map_values(self, fn: Callable[[V_co], U], *, name: str | None = None) -> KeyedStream[K_co, U]:
        """`(key, fn(value))` for every pair; stays keyed.

        It runs before the exchange (the key does not change), on the kernel
        that read the record, so the exchange carries the smaller values and
        an aggregate after it can pre-aggregate.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> keyed = flow.from_iterable(["a", "bb"]).key_by(len)
        >>> out = keyed.map_values(str.upper).collect()
        >>> run(flow)
        >>> out.items
        [(1, 'A'), (2, 'BB')]
        """
        label = name or f"map_values({_fn_name(fn)})"
        factory = functools.partial(ops.MapValues, _function(fn, "map_values"))
        node = self.flow.graph.add(label, factory, [Edge(self.node, 0)])
        stream: KeyedStream[K_co, U] = KeyedStream(self.flow, node)
        stream._exchange_out = self._exchange_out
        return stream

    def reduce(
        self, fn: Callable[[V_co, V_co], V_co], *, emit: str = "final", name: str | None = None
    ) -> KeyedStream[K_co, V_co]:
        """`(key, v1 ⊕ v2 ⊕ ...)` per key with `fn(acc, value)`, at end of input
        (`emit="final"`), or the key's value so far after every batch that
        changed it (`emit="updates"`: a running aggregate, for endless inputs).

        `fn` must be associative: with several kernels each pre-reduces its
        own values per key before the exchange, and the owner reduces those.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> keyed = flow.from_iterable([3, 8, 5, 1]).key_by(lambda n: n % 2)
        >>> out = keyed.reduce(max).collect()
        >>> run(flow, cores=2)
        >>> sorted(out.items)
        [(0, 8), (1, 5)]
        """
        reduce = functools.partial(ops.Reduce, _function(fn, "reduce"), emit=emit)
        return self._keyed(name or f"reduce({_fn_name(fn)})", reduce,
                           _combiner(emit, functools.partial(ops.Reduce, fn), reduce), emit=emit)

    @overload
    def fold(
        self, init: Callable[[], A], fn: Callable[[A, V_co], A], *, emit: str = "final",
        name: str | None = None
    ) -> KeyedStream[K_co, A]: ...

    @overload
    def fold(
        self, init: A, fn: Callable[[A, V_co], A], *, emit: str = "final", name: str | None = None
    ) -> KeyedStream[K_co, A]: ...

    def fold(
        self, init: Any, fn: Callable[[Any, V_co], Any], *, emit: str = "final", name: str | None = None
    ) -> KeyedStream[K_co, Any]:
        """`(key, fn(...fn(init, v1)..., vn))` per key, at end of input, or
        with `emit="updates"` the key's value so far after every batch that
        changed it. `init` is a start value or a zero-argument factory
        (`list`, `dict`).

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> keyed = flow.from_iterable(["ant", "bee", "asp"]).key_by(lambda w: w[0])
        >>> out = keyed.fold(list, lambda acc, w: acc + [w]).collect()
        >>> run(flow)
        >>> out.items
        [('a', ['ant', 'asp']), ('b', ['bee'])]
        """
        ops.check_emit(emit)
        factory = functools.partial(ops.Fold, init, _function(fn, "fold"), emit=emit)
        return self._keyed(name or f"fold({_fn_name(fn)})", factory, emit=emit)

    def distinct(  # keyed: distinct (key, value) pairs
        self, *, within: ops.Tumbling | None = None, name: str | None = None
    ) -> KeyedDistinctStream[K_co, V_co]:
        """Each `(key, value)` the first time it comes, at once (values must
        be hashable). `within=Tumbling(size)` and `.late_count` as for
        `Stream.distinct`.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> bids = flow.from_iterable([("lamp", "ann"), ("lamp", "bob"), ("lamp", "ann"), ("rug", "ann")])
        >>> out = bids.key_by(lambda b: b[0]).map_values(lambda b: b[1]).distinct().collect()
        >>> run(flow, cores=2)
        >>> sorted(out.items)                       # who bid on what
        [('lamp', 'ann'), ('lamp', 'bob'), ('rug', 'ann')]
        """
        label = _distinct_label(within, name)
        stream: KeyedDistinctStream[K_co, V_co] = self._distinct(label, within, values_only=False)
        return stream

    def _distinct(self, label: str, within: ops.Tumbling | None, values_only: bool) -> Any:
        ops.check_within(within)
        hint = None
        if within is not None:
            hint = _check_event_time(self, label, "distinct(within=...) needs event time")
        base = functools.partial(ops.Distinct, within, values_only)
        node = self.flow.graph.add(label, _hinted(base, hint), [self._edge()],
                                   kind=("Distinct",) if within is None else ("Distinct", repr(within)))
        if within is not None:
            node.time_check = ("distinct(within=...) needs event time", base)
        late_count = LateCount(node)
        self.flow._late_counts.append(late_count)
        if values_only:
            distinct: DistinctStream[Any] = DistinctStream(self.flow, node)
            distinct.late_count = late_count
            return distinct
        stream: KeyedDistinctStream[K_co, V_co] = KeyedDistinctStream(self.flow, node)
        stream._exchange_out = False  # on the kernel that owns the key
        stream.late_count = late_count
        return stream

    def stateful_map(
        self, fn: Callable[[A | None, V_co], tuple[A | None, U]], *, name: str | None = None
    ) -> KeyedStream[K_co, U]:
        """`(key, out)` at once for every pair, where `fn(state, value)`
        returns `(state, out)` and the state is kept per key: None the first
        time a key is seen; returning None as the state forgets the key. The
        states are in epoch snapshots: a resumed run goes on from them. The
        output keeps the records' event time.

        >>> from kernel import Dataflow, run
        >>> def running_total(total, amount):
        ...     total = (total or 0) + amount
        ...     return total, total
        >>> flow = Dataflow()
        >>> sales = flow.from_iterable([("tea", 3), ("jam", 5), ("tea", 4)]).key_by(lambda s: s[0])
        >>> out = sales.map_values(lambda s: s[1]).stateful_map(running_total).collect()
        >>> run(flow, cores=2)
        >>> sorted(out.items)
        [('jam', 5), ('tea', 3), ('tea', 7)]
        """
        ops.StatefulMap(fn)  # checks fn now, when the flow is built
        factory = functools.partial(ops.StatefulMap, _function(fn, "stateful_map"))
        return self._keyed(name or f"stateful_map({_fn_name(fn)})", factory)

    def window(
        self, window: ops.Tumbling | ops.Sliding | ops.Session, *, late: bool = False, name: str | None = None
    ) -> WindowedStream[K_co, V_co]:
        """Per-key event-time windows: `Tumbling(size)`, `Sliding(size, step)`
        or `Session(gap)` (from `operators`). The records need timestamps
        (the source's `timestamp=`). Late events are dropped and counted;
        with `late=True` they come out of the aggregate's `.late` stream.

        >>> from kernel import Dataflow, run
        >>> from operators import Tumbling
        >>> events = [("a", 0.5), ("a", 1.5), ("b", 1.7), ("a", 0.2)]   # (key, time)
        >>> flow = Dataflow()
        >>> source = flow.from_iterable(events, timestamp=lambda e: e[1], batch_size=1)
        >>> counts = source.key_by(lambda e: e[0]).window(Tumbling(1.0)).count()
        >>> out = counts.collect()
        >>> run(flow)
        >>> [(k, w.start, w.end, n) for k, w, n in out.items]
        [('a', 0.0, 1.0, 1), ('a', 1.0, 2.0, 1), ('b', 1.0, 2.0, 1)]
        >>> counts.late_count.value          # ("a", 0.2) came after the watermark passed 1.0
        1
        """
        ops.check_window(window)
        ops.check_late(late, f"window({window!r})")
        _refuse_in_loop(self, f"window({window!r})",
                        "a window needs event time, and a loop's rounds have none")
        stream = WindowedStream(self, window, late)
        stream._time_hint = _check_event_time(self, f"window({window!r})")
        # (`name=` on any method, as the README says: the window's aggregate
        # is the step it makes, named so unless the aggregate is named itself)
        if name is not None:
            _check_step_name(name)
        stream._name = name
        return stream

    @overload
    def join(
        self,
        other: KeyedStream[K_co, W],
        window: None = None,
        *,
        ttl: float | None = None,
        name: str | None = None,
    ) -> JoinResults[K_co, tuple[V_co, W]]: ...

    @overload
    def join(
        self,
        other: KeyedStream[K_co, W],
        window: ops.Tumbling | ops.Sliding | ops.Session,
        *,
        late: bool = False,
        name: str | None = None,
    ) -> WindowResults[K_co, V_co | W, tuple[V_co, W]]: ...

    def join(
        self,
        other: KeyedStream[K_co, W],
        window: ops.Tumbling | ops.Sliding | ops.Session | None = None,
        *,
        late: bool = False,
        ttl: float | None = None,
        name: str | None = None,
    ) -> Any:
        """Windowed inner join: `(key, window, (left, right))` for every pair
        of this stream's and `other`'s values with the same key in the same
        window, when the window closes. Late events (`late=True`) come from
        either side.

        Without a window, the incremental join: `(key, (left, right))` at
        once, as the second of a pair arrives; with `ttl=seconds`, an
        interval join (see `_join_unwindowed`). A key that is a NaN (a float's,
        a Decimal's, a complex's), or a tuple or frozenset holding one,
        matches nothing (as NULL keys in SQL).

        >>> from kernel import Dataflow, run
        >>> from operators import Tumbling
        >>> flow = Dataflow()
        >>> clicks = flow.from_iterable([("ann", 0.1), ("bob", 0.4)], timestamp=lambda e: e[1])
        >>> views = flow.from_iterable([("ann", 0.7), ("ann", 1.2)], timestamp=lambda e: e[1])
        >>> left = clicks.key_by(lambda e: e[0]).map_values(lambda e: "click")
        >>> right = views.key_by(lambda e: e[0]).map_values(lambda e: e[1])
        >>> out = left.join(right, Tumbling(1.0)).collect()
        >>> pairs = left.join(right).collect()                    # no window
        >>> run(flow)
        >>> out.items
        [('ann', Window(0.0, 1.0), ('click', 0.7))]
        >>> pairs.items
        [('ann', ('click', 0.7)), ('ann', ('click', 1.2))]
        """
        if not isinstance(other, KeyedStream):
            raise TypeError(f"join needs a keyed stream (key_by first), got {other!r}")
        if other.flow is not self.flow:
            raise ValueError(f"{other!r} belongs to another dataflow")
        ops.check_late(late, name or "join")
        if window is None:
            if late:
                raise ValueError("late= is for a windowed join; a join with ttl= counts its late values")
            return self._join_unwindowed(other, ttl, name)
        if ttl is not None:
            raise ValueError("ttl= is for a join without a window (a window's end bounds its state)")
        ops.check_window(window)
        label = name or f"join {window!r}"
        # its pairs come when the watermark closes a window: after a run's
        # last round, so what it fed back would go into no round
        _refuse_in_loop(self, label, "a windowed join needs event time, and a loop's rounds have none",
                        "put it after the loop, or join without a window")
        hint = _check_event_time(self, label, other=other)
        factory = _hinted(functools.partial(ops.WindowJoin, window, late), hint)
        node = self.flow.graph.add(label, factory, [self._edge(0), other._edge(1)],
                                   kind=("WindowJoin", repr(window)))
        return WindowResults._around(self.flow, node, late)

    def _join_unwindowed(
        self, other: KeyedStream[K_co, W], ttl: float | None, name: str | None
    ) -> JoinResults[K_co, tuple[V_co, W]]:
        """Incremental inner join: `(key, (left, right))` at once for every
        pair of this stream's and `other`'s values with the same key, as the
        second of the two arrives (each side's values are kept per key, in
        snapshots). The pair's event time is the later of its two.

        With `ttl=seconds` (an interval join, which needs event time): a
        pair joins when its times are at most `ttl` apart, and a value is
        forgotten once the watermark passes its time plus `ttl`, so memory
        stays bounded on endless inputs. A value behind the watermark when
        it comes is late: dropped and counted (`late_count.value`).

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> people = flow.from_iterable([(1, "ann"), (2, "bob")]).key_by(lambda p: p[0])
        >>> auctions = flow.from_iterable([(1, "lamp"), (1, "vase"), (3, "rug")]).key_by(lambda a: a[0])
        >>> pairs = people.map_values(lambda p: p[1]).join(auctions.map_values(lambda a: a[1]))
        >>> out = pairs.collect()
        >>> run(flow, cores=2)
        >>> sorted(out.items)
        [(1, ('ann', 'lamp')), (1, ('ann', 'vase'))]
        """
        ops.check_ttl(ttl)
        label = name or ("join" if ttl is None else f"join ttl={ttl!r}")
        hint = None
        if ttl is not None:
            needs = "a join with ttl= needs event time"
            hint = _check_event_time(self, label, needs, other)
        base = functools.partial(ops.KeyedJoin, ttl)
        node = self.flow.graph.add(label, _hinted(base, hint), [self._edge(0), other._edge(1)],
                                   kind=("KeyedJoin",))
        if ttl is not None:
            node.time_check = (needs, base)
        results: JoinResults[K_co, tuple[V_co, W]] = JoinResults(self.flow, node)
        results._exchange_out = False  # on the kernel that owns the key
        results.late_count = LateCount(node)
        self.flow._late_counts.append(results.late_count)
        return results

    def count(self, *, emit: str = "final", name: str | None = None) -> KeyedStream[K_co, int]:
        """`(key, number of records)` per key, at end of input, or with
        `emit="updates"` the key's count so far after every batch with it.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> words = flow.from_iterable("the cat saw the dog".split())
        >>> out = words.key_by(lambda w: w).count().collect()
        >>> run(flow, cores=2)
        >>> sorted(out.items)
        [('cat', 1), ('dog', 1), ('saw', 1), ('the', 2)]
        >>> flow = Dataflow()
        >>> words = flow.from_iterable("the cat saw the dog".split(), batch_size=2)
        >>> running = words.key_by(lambda w: w).count(emit="updates").collect()
        >>> run(flow)
        >>> running.items                  # after each batch of two words
        [('the', 1), ('cat', 1), ('saw', 1), ('the', 2), ('dog', 1)]
        """
        count, add_counts = functools.partial(ops.Count, emit=emit), functools.partial(ops.Sum, emit=emit)
        return self._keyed(name or "count", count, _combiner(emit, ops.Count, add_counts), emit=emit)

    def sum(
        self: KeyedStream[Any, _SupportsAdd], *, emit: str = "final", name: str | None = None
    ) -> KeyedStream[K_co, V_co]:
        """`(key, sum of values)` per key, at end of input (the first value
        plus the next ones, so any values with `+`), or with `emit="updates"`
        the key's sum so far after every batch that changed it.

        >>> from kernel import Dataflow, run
        >>> flow = Dataflow()
        >>> sales = flow.from_iterable([("tea", 3), ("jam", 5), ("tea", 4)])
        >>> out = sales.key_by(lambda s: s[0]).map_values(lambda s: s[1]).sum().collect()
        >>> run(flow)
        >>> out.items
        [('tea', 7), ('jam', 5)]
        """
        total = functools.partial(ops.Sum, emit=emit)
        return self._keyed(name or "sum", total, _combiner(emit, ops.Sum, total), emit=emit)


class DistinctStream(Stream[T_co]):
    """What `Stream.distinct` gives: a stream; `.late_count.value` (after
    the run) is how many records `within=` found late."""

    late_count: LateCount


class KeyedDistinctStream(KeyedStream[K_co, V_co], DistinctStream[tuple[K_co, V_co]]):
    """What `KeyedStream.distinct` gives: a keyed stream with `.late_count`
    as `DistinctStream`."""

    late_count: LateCount


class JoinResults(KeyedStream[K_co, V_co]):
    """The `(key, (left, right))` pairs of a join without a window: a keyed
    stream; `.late_count.value` (after the run) is how many values a join
    with `ttl=` found late."""

    late_count: LateCount


class WindowedStream(Generic[K_co, V_co]):
    """A keyed stream cut into event-time windows (`KeyedStream.window`).
    Each aggregate emits `(key, window, result)` once the watermark passes
    the window's end; `window.start` and `window.end` bound it, `[start, end)`."""

    def __init__(
        self, keyed: KeyedStream[K_co, V_co], window: ops.Tumbling | ops.Sliding | ops.Session, late: bool
    ) -> None:
        self._keyed = keyed
        self.window = window
        self._late = late
        self._time_hint: str | None = None  # custom steps on the way (see _check_event_time)
        self._name: str | None = None  # window(..., name=): its aggregate's, unless that has one

    def __repr__(self) -> str:
        return f"<WindowedStream {self._keyed.node.label} {self.window!r}>"

    def _aggregate(self, name: str | None, default: str,
                   aggregation: ops.Aggregation) -> WindowResults[Any, Any, Any]:
        label = name or self._name or default
        keyed = self._keyed
        hint = self._time_hint
        factory = _hinted(functools.partial(ops.WindowAggregate, self.window, aggregation, self._late), hint)
        # with several kernels, count/sum/reduce over tumbling or sliding
        # windows pre-aggregate per kernel before the exchange
        halves = ops.window_combiner(self.window, aggregation, self._late)
        combiner = Combiner(*(_hinted(half, hint) for half in halves)) if halves else None
        kind = ("WindowAggregate", repr(self.window), type(aggregation).__qualname__)
        node = keyed.flow.graph.add(f"{label} {self.window!r}", factory, [keyed._edge()],
                                    combiner=combiner, kind=kind)
        return WindowResults._around(keyed.flow, node, self._late)

    def reduce(
        self, fn: Callable[[V_co, V_co], V_co], *, name: str | None = None
    ) -> WindowResults[K_co, V_co, V_co]:
        """`fn(acc, value)` over each window's values, in arrival order.

        >>> from kernel import Dataflow, run
        >>> from operators import Tumbling
        >>> flow = Dataflow()
        >>> events = flow.from_iterable([("a", 0.1, 4), ("a", 0.6, 2), ("a", 1.3, 5)],
        ...                             timestamp=lambda e: e[1])
        >>> windows = events.key_by(lambda e: e[0]).map_values(lambda e: e[2]).window(Tumbling(1.0))
        >>> out = windows.reduce(max).collect()
        >>> run(flow)
        >>> [(k, w.start, top) for k, w, top in out.items]
        [('a', 0.0, 4), ('a', 1.0, 5)]
        """
        return self._aggregate(name, f"window reduce({_fn_name(fn)})", ops.ReduceAggregation(fn))

    @overload
    def fold(
        self, init: Callable[[], A], fn: Callable[[A, V_co], A], *, name: str | None = None
    ) -> WindowResults[K_co, V_co, A]: ...

    @overload
    def fold(
        self, init: A, fn: Callable[[A, V_co], A], *, name: str | None = None
    ) -> WindowResults[K_co, V_co, A]: ...

    def fold(
        self, init: Any, fn: Callable[[Any, V_co], Any], *, name: str | None = None
    ) -> WindowResults[K_co, V_co, Any]:
        """`fn(...fn(init, v1)..., vn)` over each window's values, in arrival order.
        `init` is a start value or a zero-argument factory (`list`, `dict`).

        >>> from kernel import Dataflow, run
        >>> from operators import Tumbling
        >>> flow = Dataflow()
        >>> events = flow.from_iterable([("a", 0.1, 4), ("a", 0.6, 2), ("a", 1.3, 5)],
        ...                             timestamp=lambda e: e[1])
        >>> windows = events.key_by(lambda e: e[0]).map_values(lambda e: e[2]).window(Tumbling(1.0))
        >>> out = windows.fold("", lambda acc, v: acc + str(v)).collect()
        >>> run(flow)
        >>> [(k, w.start, digits) for k, w, digits in out.items]
        [('a', 0.0, '42'), ('a', 1.0, '5')]
        """
        return self._aggregate(name, f"window fold({_fn_name(fn)})", ops.FoldAggregation(init, fn))

    def count(self, *, name: str | None = None) -> WindowResults[K_co, V_co, int]:
        """The number of records in each window.

        >>> from kernel import Dataflow, run
        >>> from operators import Tumbling
        >>> flow = Dataflow()
        >>> events = flow.from_iterable([("a", 0.1, 4), ("a", 0.6, 2), ("a", 1.3, 5)],
        ...                             timestamp=lambda e: e[1])
        >>> windows = events.key_by(lambda e: e[0]).map_values(lambda e: e[2]).window(Tumbling(1.0))
        >>> out = windows.count().collect()
        >>> run(flow)
        >>> [(k, w.start, n) for k, w, n in out.items]
        [('a', 0.0, 2), ('a', 1.0, 1)]
        """
        return self._aggregate(name, "window count", ops.CountAggregation())

    def sum(
        self: WindowedStream[Any, _SupportsAdd], *, name: str | None = None
    ) -> WindowResults[K_co, V_co, V_co]:
        """The sum of each window's values (the first plus the next ones).

        >>> from kernel import Dataflow, run
        >>> from operators import Tumbling
        >>> flow = Dataflow()
        >>> events = flow.from_iterable([("a", 0.1, 4), ("a", 0.6, 2), ("a", 1.3, 5)],
        ...                             timestamp=lambda e: e[1])
        >>> windows = events.key_by(lambda e: e[0]).map_values(lambda e: e[2]).window(Tumbling(1.0))
        >>> out = windows.sum().collect()
        >>> run(flow)
        >>> [(k, w.start, total) for k, w, total in out.items]
        [('a', 0.0, 6), ('a', 1.0, 5)]
        """
        return self._aggregate(name, "window sum", ops.SumAggregation())

    def top(
        self, k: int, *, by: Callable[[V_co], Any] | None = None, name: str | None = None
    ) -> WindowResults[K_co, V_co, list[V_co]]:
        """The `k` largest values of each key and window, largest first, by
        `by(value)` (default: the values themselves); of equal ones, the
        earlier arrival first.

        >>> from kernel import Dataflow, run
        >>> from operators import Tumbling
        >>> flow = Dataflow()
        >>> bids = flow.from_iterable([("lamp", 0.1, 5), ("lamp", 0.3, 9), ("lamp", 0.6, 7),
        ...                            ("lamp", 1.2, 1)], timestamp=lambda b: b[1])
        >>> windows = bids.key_by(lambda b: b[0]).window(Tumbling(1.0))
        >>> out = windows.top(2, by=lambda b: b[2]).collect()
        >>> run(flow)
        >>> [(k, w.start, [b[2] for b in best]) for k, w, best in out.items]
        [('lamp', 0.0, [9, 7]), ('lamp', 1.0, [1])]
        """
        return self._aggregate(name, f"window top({k})", ops.TopAggregation(k, by))

    def collect(self, *, name: str | None = None) -> WindowResults[K_co, V_co, list[V_co]]:
        """Each window's values as a list, in timestamp order.

        >>> from kernel import Dataflow, run
        >>> from operators import Tumbling
        >>> flow = Dataflow()
        >>> events = flow.from_iterable([("a", 0.1, 4), ("a", 0.6, 2), ("a", 1.3, 5)],
        ...                             timestamp=lambda e: e[1])
        >>> windows = events.key_by(lambda e: e[0]).map_values(lambda e: e[2]).window(Tumbling(1.0))
        >>> out = windows.collect().collect()
        >>> run(flow)
        >>> [(k, w.start, values) for k, w, values in out.items]
        [('a', 0.0, [4, 2]), ('a', 1.0, [5])]
        """
        return self._aggregate(name, "window collect", ops.CollectAggregation())


class WindowResults(Stream[tuple[K_co, ops.Window, R_co]], Generic[K_co, V_co, R_co]):
    """The `(key, window, result)` records of a windowed aggregate or join
    of values `V_co` per key `K_co` into results `R_co`.

    `.late_count.value` (after the run) is how many events came too late;
    with `late=True`, `.late` is a stream of those events, `(key, value)`,
    and a windowed join's `.late_left` and `.late_right` those of one side."""

    late_count: LateCount
    _late_stream: Stream[tuple[K_co, V_co]] | None = None
    _window_node: Node | None = None
    _late_sides: dict[int, Stream[Any]]

    @classmethod
    def _around(cls, flow: Dataflow, window_node: Node, late: bool) -> WindowResults[Any, Any, Any]:
        count = LateCount(window_node)
        flow._late_counts.append(count)
        if not late:
            results = cls(flow, window_node)
        else:
            graph, edge = flow.graph, Edge(window_node, 0)
            results_node = graph.add(
                f"{window_node.name}: results", functools.partial(ops.SelectBatches, False), [edge]
            )
            late_node = graph.add(
                f"{window_node.name}: late", functools.partial(ops.SelectBatches, True), [edge]
            )
            results = cls(flow, results_node)
            results._late_stream = Stream(flow, late_node)
        results.late_count = count
        results._window_node = window_node
        results._late_sides = {}
        return results

    def distinct(
        self, *, within: ops.Tumbling | None = None, name: str | None = None
    ) -> DistinctStream[tuple[K_co, ops.Window, R_co]]:
        """`Stream.distinct` of the results. A window's results come out on
        the kernel that owns their key, and equal results have equal keys,
        so they meet there without crossing kernels: the records are keyed
        by their key where they are (its state is then the key's, as a
        keyed step's is), not sent to the owner of the whole record (NEXMark
        q8 on two kernels: benches/RESULTS.md).

        >>> from kernel import Dataflow, run
        >>> from operators import Tumbling
        >>> flow = Dataflow()
        >>> clicks = flow.from_iterable([("ann", 0.1), ("ann", 0.3)], timestamp=lambda e: e[1])
        >>> views = flow.from_iterable([("ann", 0.7)], timestamp=lambda e: e[1])
        >>> left = clicks.key_by(lambda e: e[0]).map_values(lambda e: "click")
        >>> right = views.key_by(lambda e: e[0]).map_values(lambda e: "view")
        >>> joined = left.join(right, Tumbling(1.0))
        >>> every, once = joined.collect(), joined.distinct().collect()
        >>> run(flow, cores=2)
        >>> len(every.items)                        # ann clicked twice in the window
        2
        >>> once.items
        [('ann', Window(0.0, 1.0), ('click', 'view'))]
        """
        label = _distinct_label(within, name)
        keyed: KeyedStream[K_co, Any] = self.key_by(_first_field, name=f"{label}: by key")
        keyed._exchange_out = False  # already on the kernel that owns the key
        stream: DistinctStream[tuple[K_co, ops.Window, R_co]] = keyed._distinct(
            label, within, values_only=True)
        return stream

    @property
    def late(self) -> Stream[tuple[K_co, V_co]]:
        if self._late_stream is None:
            raise AttributeError(
                "late events are dropped (and counted): ask for them with window(w, late=True)"
            )
        return self._late_stream

    @property
    def late_left(self) -> Stream[tuple[K_co, Any]]:
        """A windowed join's late events of its left side (`self` of
        `left.join(right, w, late=True)`), `(key, value)`: `.late` has both
        sides' and cannot say which a value came from."""
        return self._late_side(0, "late_left")

    @property
    def late_right(self) -> Stream[tuple[K_co, Any]]:
        """A windowed join's late events of its right side (`other`)."""
        return self._late_side(1, "late_right")

    def _late_side(self, side: int, attribute: str) -> Stream[tuple[K_co, Any]]:
        node = self._window_node
        if node is None or node.kind[:1] != ("WindowJoin",):
            raise AttributeError(f"{attribute} is a windowed join's (left.join(right, w, late=True)); "
                                 "a window's late events are all in .late")
        if self._late_stream is None:
            raise AttributeError(
                "late events are dropped (and counted): ask for them with join(other, w, late=True)")
        stream = self._late_sides.get(side)
        if stream is None:  # made when asked for: a side stream looks at each of the join's batches
            made = self.flow.graph.add(f"{node.name}: {attribute}",
                                       functools.partial(ops.SelectBatches, True, side), [Edge(node, 0)])
            stream = self._late_sides[side] = Stream(self.flow, made)
        return stream


class FileStream(Stream[T_co]):
    """The stream `from_files` returns: a `Stream` whose `.skipped_count.value`
    (after the run) is how many malformed lines were skipped (`on_error="skip"`)."""

    skipped_count: SkippedCount
