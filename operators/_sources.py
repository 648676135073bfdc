"""Sources: bounded iterables and async iterables.

With several kernels, each kernel reads a disjoint share of the input: a
list's records in runs of a few hundred, run `u` in partition `u %
key_groups` (an iterator's and a small list's record by record), and kernel
`k` of `n` reads partitions `k, k + n, ...` (`_shares.py`), so positions
move by partition when a run is resumed on another number of kernels. That needs no coordination and works for
any re-iterable input (each kernel process iterates it and keeps its share),
and for an iterator too: each kernel process, forked from the one that built
the flow or importing the pipeline file itself, reads its own copy. Not for
a file object that kernels inherit by fork: their copies share one read
position, so each would lose what the others read (refused).

An iterator (a generator, `iter(list)`, a file object) can be read only
once: the flow's `_Input` remembers that a run of this process read it, and
a later run's source refuses to start rather than silently read nothing.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import io
import operator
import os
import types
import weakref
from collections.abc import AsyncIterator, Iterator
from itertools import islice

from kernel.dataflow._errors import (
    PASSES_THROUGH,
    KernelError,
    OperatorError,
    closed_here,
    describe_record,
)
from kernel.dataflow._operator import DEFAULT_BATCH_SIZE, Source
from kernel.execution._launcher_notes import on_note, tell_launcher
from kernel.execution._standard_input import is_stream, let_go_of_its_writers, was_let_go

from ._live_input import (
    _FIRST_LOOK,
    _LAST_LOOK,
    _LET_GO_WITHIN,
    LiveReader,
    forget_readers_left_over,
    let_go_if_rewound,
    note_read_elsewhere,
    note_taken_beside_standard_input,
    refuse_other_file_objects,
    refuse_other_iterators,
    rewound,
    shares_standard_input,
)
from ._shares import Share, merge_consumed, sequence_run


def in_a_fixed_order(step: str, items: set | frozenset, what: str) -> list:
    """A set's items in an order that every process repeats: sorted.

    A set iterates in the order of its items' hashes, and those of str and
    bytes (and of tuples, datetimes... holding them) differ from one
    process to the next (PYTHONHASHSEED). Sources deal out and resume their
    input by position, so where another process reads the same set (a
    cluster's processes, each dealing out its own copy; a resumed run,
    reading past what the crashed one handed on, by count) its order must
    be the same: a set of 2,000 strings lost and doubled ~500 records
    each way there. Sorting fixes the order; items that do not sort are
    refused, saying so."""
    try:
        ordered = sorted(items)
        # `sorted` raises nowhere for items whose `<` is a partial order
        # (frozensets: "is a subset of"), and leaves them in the set's
        # order: each must come strictly before the next
        if all(map(operator.lt, ordered, islice(ordered, 1, None))):
            return ordered
        problem = "their order is partial: `<` does not hold between some neighbours"
    except TypeError as exc:
        problem = str(exc)
    raise KernelError(
        f"{step}: {what} is a {type(items).__name__}, whose order differs from one process to the "
        f"next (str hashes are randomized), and its items do not sort ({problem}); a run with a "
        "state_dir, or a cluster, reads the same input again in another process by position: "
        "give a list in a fixed order"
    )


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


class _Input:
    """A source's input as a flow holds it, shared by every run of the flow
    in this process; calling it makes a fresh source (per run and kernel).

    It outlives the runs, so it remembers whether a run of this process read
    a one-shot input (an iterator): a later run would find it exhausted, or
    read only what is left, and give wrong results without a word."""

    def __init__(self, source_class, data, batch_size: int, one_shot: bool) -> None:
        self.source_class = source_class
        self.data = data
        self.batch_size = check_batch_size(batch_size)
        self.one_shot = one_shot
        self.read = False  # a run in this process has read from `data`
        self.built_in = os.getpid()  # the process that built the flow
        _inputs[id(self)] = self  # (kernel 0 names it so: `_read_in_kernel_0`)

    def __call__(self) -> Source:
        return self.source_class(self.data, self.batch_size, _input=self)

    def refuse_if_read(self, name: str, remedy: str) -> None:
        if self.one_shot and self.read:
            raise KernelError(
                f"{name}: its input {describe_record(self.data)} is an iterator that an earlier "
                "run of this flow read, and an iterator can be read only once (this run would "
                f"silently get what is left of it, if anything): {remedy}, or build the flow "
                "again with a fresh iterator"
            )


# The inputs of the flows this process built, by id, weakly: a kernel
# process forked from it has each at the same address, and names one by it
# (`tell_launcher`) as it reads the live stream of it in kernel 0.
_inputs: weakref.WeakValueDictionary[int, _Input] = weakref.WeakValueDictionary()


def _on_the_stream_of(input_id: int, act) -> None:
    """In the launcher's process: `act(stream)` on the live stream the
    input `input_id` reads, where this process built it and it reads one."""
    shared = _inputs.get(input_id)
    if shared is not None and shared.built_in == os.getpid():
        stream = _stream_it_reads(shared.data)
        if stream is not None:
            act(stream)


def _read_in_kernel_0(input_id: int) -> None:
    """Kernel 0 of a run is about to read the live stream the input
    `input_id` reads. What it reads is gone from the stream for this
    process's later runs too (`note_read_elsewhere`)."""
    _on_the_stream_of(input_id, note_read_elsewhere)


on_note("live stream read", _read_in_kernel_0)


def _read_from_its_start_in_kernel_0(input_id: int) -> None:
    """Kernel 0 of a run reads the live stream the input `input_id` reads,
    a regular file, from its start: the readers earlier runs here left of
    it hold lines of an older read (`forget_readers_left_over`)."""
    _on_the_stream_of(input_id, forget_readers_left_over)


on_note("live stream read from its start", _read_from_its_start_in_kernel_0)


def _length(data) -> int:
    """`len(data)`, also for a range longer than sys.maxsize (len() cannot
    return it; such a range slices all the same)."""
    try:
        return len(data)
    except OverflowError:
        if not isinstance(data, range):
            raise
        step = data.step
        return max(0, (data.stop - data.start + step - (1 if step > 0 else -1)) // step)


# How far `_inherited_file` looks from an iterator for the file it reads.
_LOOKED_AT = 256  # objects at most
_SMALL = 16  # a tuple, list or dict of more items is not looked into
# (looked into: the object a method is bound to; a partial's function and arguments,
# `iter(functools.partial(f.read, 4096), b"")`)
_METHODS = (types.BuiltinMethodType, types.MethodType, functools.partial)


def _stream_it_reads(data) -> io.IOBase | None:
    """The standard input or another stream only one process can read
    whole (`is_stream`) that `data` is, or reads (`_inherited_file`); None
    if it reads none."""
    found = _file_it_reads(data)
    return found if found is not None and is_stream(found) else None


def _file_it_reads(data) -> io.IOBase | None:
    try:
        return _inherited_file(data)
    except Exception:  # an object's own __getattr__ or __len__ failing: no file seen
        return None


def _inherited_file(data) -> io.IOBase | None:
    """A file object open for reading that `data` reads from, as far as can
    be seen: `data` itself, or one its iterators hold (a generator's frame,
    `map`'s and `zip`'s iterators, `csv.reader`'s input, an iterator
    object's attributes, the object of a method `iter(f.readline, "")`
    calls), found through their references (`gc`), a few hops deep.
    Containers bigger than a few items, functions, modules and classes
    are not looked into (a function's globals would reach any file its
    module has open). (Not through a method: `iter(sys.stdin.readline, "")`
    was read as no live stream, on the loop, and a run with a state_dir
    over it after a failed run over `sys.stdin` resumed and lost 10,178 of
    20,000 lines, no error. Nor through a `functools.partial`:
    `iter(functools.partial(sys.stdin.buffer.read, 4096), b"")` on 2
    kernels was read by both, each keeping its share of what it read:
    645,818 of 1,288,890 bytes came, no error.)"""
    seen = {id(data)}
    todo = [data]
    looked = 0
    while todo and looked < _LOOKED_AT:
        obj = todo.pop()
        looked += 1
        if isinstance(obj, io.IOBase):
            try:
                if not obj.closed and obj.readable():
                    return obj
            except Exception:  # a broken wrapper: not what this looks for
                pass
            continue
        if obj is not data and not hasattr(obj, "__next__") and not isinstance(obj, _METHODS):
            if not isinstance(obj, (tuple, list, dict)) or len(obj) > _SMALL:
                continue
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, (type, type(gc), type(_inherited_file))):
                seen.add(id(ref))
                todo.append(ref)
    return None


class IterableSource(Source):
    """Reads a bounded iterable in batches of at most `batch_size` records
    (fewer when the kernel wants fewer: `records_wanted`)."""

    def __init__(self, iterable, batch_size: int = DEFAULT_BATCH_SIZE, *,
                 _input: _Input | None = None) -> None:
        self.iterable = iterable
        self.batch_size = check_batch_size(batch_size)
        self._input = _input

    @classmethod
    def factory(cls, iterable, batch_size: int = DEFAULT_BATCH_SIZE) -> _Input:
        """What `from_iterable` adds to a flow: a fresh source per run and
        kernel, and a second run over an iterator refused."""
        return _Input(cls, iterable, batch_size, isinstance(iterable, Iterator))

    def open(self, context):
        peers = context.peers
        data = self.iterable
        self._unread = None  # the one-shot input to mark as read when first read
        self._live_stream = None  # the live stream the input reads (`_poll_live`)
        self._live = None  # its reader, taken (or made) at the first poll
        self._beside_standard_input = None  # the file it reads, sharing descriptor 0's offset
        self._let_go_by = None  # (deadline, next look) while a rewound file's old reader reads
        if isinstance(data, (set, frozenset)) and (context.snapshots or context.processes > 1):
            data = in_a_fixed_order(self.name, data, "from_iterable's input")
        if isinstance(data, (list, tuple, range)):
            # Slicing a sequence is several times faster than islice.
            self._length = _length(data)
            self._share = Share(context.index, peers, context.key_groups,
                                sequence_run(self._length, peers, context.key_groups))
            self._sequence = data
            self._iterator = None
        else:
            self._share = Share(context.index, peers, context.key_groups)
            # (looked for on one kernel too: a live stream is read on a thread, `_poll_live`)
            found = _file_it_reads(data)
            read = found if found is not None and is_stream(found) else None
            stream = read is not None
            if found is not None and not stream and shares_standard_input(found):
                self._beside_standard_input = found  # (noted at its first read, `poll`)
            self._check_input(peers, stream)
            self._sequence = None
            if stream and peers > 1:
                if was_let_go(read):
                    raise KernelError(
                        f"{self.name}: its input reads a socket the application opened before "
                        "run_async(): the kernel processes of run_async (and of run() called on a "
                        "thread other than the main one) let go of the application's connections "
                        "(one it closes must end, not stay open in every kernel), and this one with "
                        "them. Connect in the kernel (give from_iterable an object whose __iter__ "
                        "connects), or run it on one kernel"
                    )
                let_go_of_its_writers(read)  # (in every kernel: each holds copies)
                # one process can read it whole: kernel 0 (of the run) reads it all, the others none
                if context.index != 0:
                    self._iterator = iter(())
                    return
                self._share = Share(0, 1, context.key_groups)
            try:
                self._iterator = iter(data)
            except TypeError as exc:
                raise OperatorError.wrap(self.name, iter, exc, record=data) from exc
            if stream:
                if context.snapshots:
                    refuse_other_iterators(read, self._iterator, context.kernel, self.name)
                refuse_other_file_objects(read, context.kernel, self.name)
                LiveReader.refuse_if_left_elsewhere(self._iterator, read, self.name)
                self._live_stream = read

    def _check_input(self, peers: int, stream: bool = False) -> None:
        shared = self._input
        if shared is None:  # made directly, not by a flow: nothing to check against
            return
        shared.refuse_if_read(self.name, "give from_iterable a list, a range or another re-iterable "
                                         "(an object whose __iter__ starts again)")
        if shared.one_shot:
            self._unread = shared
        if inspect.isgenerator(self.iterable) and inspect.getgeneratorstate(self.iterable) == "GEN_CLOSED":
            # read to its end (by another flow: this one's would say so above), or closed
            raise KernelError(
                f"{self.name}: its input {describe_record(self.iterable)} is a generator that was "
                "read to its end (or closed) before this run, and an iterator can be read only "
                "once (this run would silently get nothing): give from_iterable a list, a range "
                "or another re-iterable, or a fresh generator"
            )
        if peers > 1 and shared.built_in != os.getpid() and not stream:
            try:
                found = _inherited_file(self.iterable)
            except Exception:  # an object's own __getattr__ or __len__ failing: no file seen
                found = None
            if found is not None:
                what = ("is a file object" if found is self.iterable
                        else f"reads {describe_record(found)}, a file object")
                raise KernelError(
                    f"{self.name}: its input {describe_record(self.iterable)} {what} that "
                    f"the {peers} kernel processes inherit from the one that built the flow: they "
                    "would share its read position, each losing the lines the others read. Give "
                    "from_iterable an object that opens the file when iterated (whose __iter__ "
                    "returns open(path)), or run the pipeline file with `python -m kernel.run "
                    "--cores N`, where each kernel process opens the file itself"
                )

    # Resuming from a snapshot: how much of each partition was read (an
    # iterator is read again from its start, past what was).
    # A sequence's length goes with its positions: resumed on a list that
    # grew or shrank, the positions would name other records (those of a
    # kernel restored as ended never read), so that run is refused.
    def on_epoch(self, epoch):
        if self._live_stream is not None:
            # The stream's position, that of its every source in this run: the
            # records taken before it were handed on, by one of them or another
            # (taken and emitted in one poll), before the epoch's markers, and
            # every source of the run is snapshotted at the same moment. (Also
            # one not polled yet, through the reader another has started: an
            # epoch can come between that one's take and this one's first
            # poll, a slice ending first; its own position, 0 or the restored
            # one, had a resumed run hand those lines on again.)
            live = self._live or LiveReader.of_run(self._iterator, self.context.kernel)
            if live is not None:
                self._share.next = max(self._share.next, live.handed)
        snapshot = self._share.snapshot()
        if self._sequence is not None:
            snapshot["length"] = self._length
        return snapshot

    def restore(self, snapshot):
        self._check_length(snapshot.get("length"))
        self._share.restore(snapshot)

    def rescale(self, snapshots, owns):
        merged = merge_consumed(snapshots, self.ENDED, self.context.key_groups)
        lengths = {s["length"] for s in snapshots if isinstance(s, dict) and "length" in s}
        for length in lengths:
            self._check_length(length)
        return merged

    def _check_length(self, length) -> None:
        if length is None or self._sequence is None or length == self._length:
            return  # (an iterator's length is not known: its records are dealt one by one)
        raise KernelError(
            f"{self.name}: the run being resumed read an input of {length} records, and this "
            f"one has {self._length}: its snapshot's positions would name other records (some "
            "never read, some twice). Resume with the input that run read, or start afresh "
            "with another state_dir"
        )

    def _mark_read(self) -> None:
        # When first read, not at open: a run that failed before reading
        # leaves the input as it was, for the next run.
        if self._unread is not None:
            self._unread.read = True
            self._unread = None

    def poll(self):
        if self._live_stream is not None:
            return self._poll_live()
        size = min(self.batch_size, self.records_wanted)
        share = self._share
        if self._sequence is not None:
            batch = share.take(self._sequence, size, self._length)
            more = share.next < self._length
        else:
            if self._beside_standard_input is not None:
                note_taken_beside_standard_input(self._beside_standard_input, self.context.kernel)
                self._beside_standard_input = None
            if self._unread is not None:
                self._mark_read()
            try:
                batch, exhausted = share.take_from(self._iterator, size)
            except PASSES_THROUGH:
                raise
            except BaseException as exc:
                raise OperatorError.wrap(self.name, self.iterable, exc, has_record=False) from exc
            more = not exhausted
        if batch:
            self.emit(batch)
        return more

    def _let_go_later(self) -> bool:
        """A reader an earlier run left of the rewound file this source reads
        is still in a read (`let_go_if_rewound`): True while it may still end
        (within `_LET_GO_WITHIN` of the first look), the source idle until it
        looks again, after 1, 2, 4 ... 100 ms; False after (refused as before).
        (Joined on the loop, it held the kernel, and the host's loop under
        `run_async`, for as long: 1 s a source.) In the loop's time, as the
        thread's, not the kernel's clock (a `VirtualClock` not advanced
        would have it wait for ever); a look after the run's end wakes a
        stopped scheduler, which runs nothing."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._let_go_by is None:
            self._let_go_by = (now + _LET_GO_WITHIN, _FIRST_LOOK)
        by, after = self._let_go_by
        if now >= by:
            return False
        self._let_go_by = (by, min(2 * after, _LAST_LOOK))
        loop.call_later(min(after, by - now), self.wake)
        return True

    def _poll_live(self):
        """A live stream (`LiveReader`): what has arrived, up to the batch
        size; None (idle, until the reader wakes this source) while nothing
        has. Started at the first poll, not at open: a source a resumed run
        restores as ended is never polled, and must not read."""
        live = self._live
        if live is None:
            # (a regular file read again from its start, once an earlier run's reader has ended)
            if not let_go_if_rewound(self._live_stream) and self._let_go_later():
                return None
            if self.context.snapshots:  # (at the first poll: a source restored as ended reads nothing)
                LiveReader.refuse_read_by_an_earlier_run(self._live_stream, self._iterator,
                                                         self.context.kernel, self.name)
            else:
                LiveReader.refuse_held_elsewhere(self._live_stream, self._iterator, self.name)
            elsewhere = self._input is not None and self._input.built_in != os.getpid()
            if elsewhere:
                # Kernel 0 of a run the flow's process started, whose stream it
                # reads: told before a line is read, as a failure kills it
                # unheard. (That process's later run with a state_dir over the
                # stream resumed, and lost what this one read, 2,810 of 3,000
                # lines, no error.)
                tell_launcher("live stream read", id(self._input))
            # (reading up to a few batches ahead: fewer handovers of the GIL
            # between the reader and the loop, ~10% of a trivial pipeline's time)
            live = self._live = LiveReader.of(self._iterator, 4 * max(self.batch_size, 1024), self.name,
                                              self._live_stream, self.context.kernel)
            if elsewhere and rewound(self._live_stream) and live.handed == 0 and not live.arrived:
                # (read from its start, no reader taken over: those the launcher's
                # earlier runs left hold an older read of it, `forget_readers_left_over`)
                tell_launcher("live stream read from its start", id(self._input))
            self._mark_read()
            live.start(self.wake)
            task = self.context.kernel.spawn(live.until_ended(), name=f"{self.name} reader")
            live.watch(task)
            return True if live.waiting() else None  # (asleep, a look within _LAST_LOOK set)
        done = live.done  # (before taking: what arrived before the end is taken first)
        start = live.handed  # (the stream's position: the run's other sources of it take too)
        records = live.take(min(self.batch_size, self.records_wanted))
        if records:
            share = self._share
            records = share.unconsumed_at(records, start)
            share.next = max(share.next, live.handed)
            if records:
                self.emit(records)
        if live.arrived:
            return True
        if done:
            live.handed_on_the_end()  # (its run's task ends: a failure from now on leaves nothing unread)
            if live.error is None:
                return False
            error = live.error
            if isinstance(error, PASSES_THROUGH):
                raise error
            raise OperatorError.wrap(self.name, self.iterable, error, has_record=False) from error
        return True if live.waiting() else None


async def _closed(source) -> None:
    """`source.aclose()`, where it has one (an async generator), its errors
    dropped: it is closed because the run ends otherwise."""
    aclose = getattr(source, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        pass


class AsyncIterableSource(Source):
    """Reads an async iterable (an async generator, say) on a low-level task.

    `aiterable` may also be a zero-argument callable returning one, so that a
    flow can be run more than once and each kernel gets its own iterator.
    The reader task appends to a buffer and wakes the source; the source
    emits what the buffer holds as one batch (at most `records_wanted`
    records; the rest at the next poll). When `batch_size` records are
    waiting, the reader pauses until the source has taken some, so a fast
    producer cannot outrun the dataflow.
    """

    def __init__(self, aiterable, batch_size: int = DEFAULT_BATCH_SIZE, *,
                 _input: _Input | None = None) -> None:
        self.aiterable = aiterable
        self.batch_size = check_batch_size(batch_size)
        self._input = _input

    @classmethod
    def factory(cls, aiterable, batch_size: int = DEFAULT_BATCH_SIZE) -> _Input:
        """What `from_async_iterable` adds to a flow: a fresh source per run
        and kernel, and a second run over an async iterator refused."""
        return _Input(cls, aiterable, batch_size, isinstance(aiterable, AsyncIterator))

    def open(self, context):
        if self._input is not None:
            self._input.refuse_if_read(self.name, "give from_async_iterable a function that "
                                                  "returns a fresh one (the async generator function)")
        source = self.aiterable
        if not hasattr(source, "__aiter__") and callable(source):
            try:
                source = source()
            except PASSES_THROUGH:
                raise
            except BaseException as exc:  # the user's factory: named, not this method
                raise OperatorError.wrap(self.name, source, exc, has_record=False) from exc
        if not hasattr(source, "__aiter__"):
            raise TypeError(f"{self.name}: {source!r} is not an async iterable")
        self._buffer: list = []
        self._exhausted = False
        self._space = None
        self._share = Share(context.index, context.peers, context.key_groups)
        self._positions: list[int] = []  # the input position of each buffered record
        # The reader starts at the first poll, not here: a source that a
        # resumed run restores as ended is opened but never polled, and must
        # not read (or hold the kernel open waiting to be polled).
        self._source = source
        self._reader_started = False

    async def _read(self, source):
        keeps = self._share.keeps
        everything = self._share.takes_everything()  # one kernel, nothing read before: no test
        position = 0
        size = self.batch_size
        try:
            async for item in source:
                if everything or keeps(position):
                    self._buffer.append(item)
                    self._positions.append(position)
                    if len(self._buffer) >= size:
                        self.wake()
                        self._space = asyncio.get_running_loop().create_future()
                        await self._space
                    else:
                        self.wake()
                position += 1
        except asyncio.CancelledError as exc:
            await _closed(source)
            if asyncio.current_task().cancelling():  # this reader cancelled (the run ends)
                raise
            # the iterator's own (a future it awaited was cancelled by someone
            # else): its failure, or the run waited for ever for this reader
            raise OperatorError.wrap(self.name, self.aiterable, exc, has_record=False) from exc
        except PASSES_THROUGH:
            raise
        except GeneratorExit as exc:
            if closed_here(exc):  # this reader being closed, not the iterator's failure
                raise
            raise OperatorError.wrap(self.name, self.aiterable, exc, has_record=False) from exc
        except BaseException as exc:
            raise OperatorError.wrap(self.name, self.aiterable, exc, has_record=False) from exc
        self._exhausted = True
        self.wake()

    # (A failed or cancelled run cancels the reader, maybe while it waits for
    # room in the buffer, with the iterator suspended at a `yield`: it is
    # closed then, so its `finally` runs before the run returns, not when
    # the collector or the loop's shutdown comes to it.)

    # Resuming: the async iterable is read again from its start and the
    # records of this kernel's partitions it had handed on are skipped (the
    # source must yield the same records in the same order again: a
    # replayable input).
    def on_epoch(self, epoch):
        return self._share.snapshot()

    def restore(self, snapshot):
        self._share.restore(snapshot)

    def rescale(self, snapshots, owns):
        return merge_consumed(snapshots, self.ENDED, self.context.key_groups)

    def poll(self):
        if not self._reader_started:
            self._reader_started = True
            if self._input is not None and self._input.one_shot:
                self._input.read = True
            self.context.kernel.spawn(self._read(self._source), name=f"{self.name} reader")
            return None  # the reader wakes this source when it has records
        buffer = self._buffer
        if buffer:
            wanted = self.records_wanted
            positions = self._positions
            if len(buffer) <= wanted:
                batch, self._buffer = buffer, []
                self._share.next = positions[-1] + 1
                positions.clear()
            else:
                batch = buffer[:wanted]
                del buffer[:wanted]
                self._share.next = positions[wanted - 1] + 1
                del positions[:wanted]
            self.emit(batch)
            space = self._space
            if space is not None and not space.done() and len(self._buffer) < self.batch_size:
                space.set_result(None)
            if self._buffer:
                return True  # more is waiting: the next tick takes it
        if self._exhausted:
            return False
        return None
