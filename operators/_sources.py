"""Sources: bounded iterables and async iterables.

With several kernels, each kernel reads a disjoint share of the input: record
`i` belongs to kernel `i % peers`. That needs no coordination and works for
any re-iterable input (each kernel process iterates it and keeps its share).
"""

from __future__ import annotations

import asyncio
from itertools import islice

from kernel._errors import KernelError, OperatorError
from kernel._operator import DEFAULT_BATCH_SIZE, Source


def check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


class IterableSource(Source):
    """Reads a bounded iterable in batches of `batch_size` records."""

    def __init__(self, iterable, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.iterable = iterable
        self.batch_size = check_batch_size(batch_size)

    def open(self, context):
        peers, index = context.peers, context.index
        data = self.iterable
        if isinstance(data, (list, tuple, range)):
            # Slicing a sequence is several times faster than islice.
            self._sequence = data if peers == 1 else data[index::peers]
            self._position = 0
            self._iterator = None
        else:
            self._sequence = None
            self._position = 0
            try:
                it = iter(data)
            except TypeError as exc:
                raise OperatorError.wrap(self.name, iter, exc, record=data) from exc
            self._iterator = it if peers == 1 else islice(it, index, None, peers)

    # Resuming from a snapshot: the position in this kernel's share.
    def on_epoch(self, epoch):
        return {"position": self._position}

    def restore(self, snapshot):
        position = snapshot["position"]
        if self._sequence is None and position:
            next(islice(self._iterator, position - 1, position), None)  # skip what was read
        self._position = position

    def poll(self):
        size = self.batch_size
        if self._sequence is not None:
            start = self._position
            batch = self._sequence[start : start + size]
            self._position = start + len(batch)
        else:
            try:
                batch = list(islice(self._iterator, size))
                self._position += len(batch)
            except KernelError:
                raise
            except Exception as exc:
                raise OperatorError.wrap(self.name, self.iterable, exc, has_record=False) from exc
        if not isinstance(batch, list):
            batch = list(batch)
        self.emit(batch)
        return len(batch) == size


class AsyncIterableSource(Source):
    """Reads an async iterable (an async generator, say) on a low-level task.

    `aiterable` may also be a zero-argument callable returning one, so that a
    flow can be run more than once and each kernel gets its own iterator.
    The reader task appends to a buffer and wakes the source; the source
    emits the whole buffer as one batch. When `batch_size` records are
    waiting, the reader pauses until the source has taken them, so a fast
    producer cannot outrun the dataflow.
    """

    def __init__(self, aiterable, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.aiterable = aiterable
        self.batch_size = check_batch_size(batch_size)

    def open(self, context):
        source = self.aiterable
        if not hasattr(source, "__aiter__") and callable(source):
            source = source()
        if not hasattr(source, "__aiter__"):
            raise TypeError(f"{self.name}: {source!r} is not an async iterable")
        self._buffer: list = []
        self._exhausted = False
        self._space = None
        self._emitted = 0  # records of this kernel's share handed on
        self._skip = 0  # on a resumed run: how many of them to read past
        # The reader starts at the first poll, not here: a source that a
        # resumed run restores as ended is opened but never polled, and must
        # not read (or hold the kernel open waiting to be polled).
        self._source = source
        self._reader_started = False

    async def _read(self, source):
        peers, index = self.context.peers, self.context.index
        position = 0
        size = self.batch_size
        try:
            async for item in source:
                if peers == 1 or position % peers == index:
                    if self._skip:
                        self._skip -= 1
                        position += 1
                        continue
                    self._buffer.append(item)
                    if len(self._buffer) >= size:
                        self.wake()
                        self._space = asyncio.get_running_loop().create_future()
                        await self._space
                    else:
                        self.wake()
                position += 1
        except KernelError:
            raise
        except Exception as exc:
            raise OperatorError.wrap(self.name, self.aiterable, exc, has_record=False) from exc
        self._exhausted = True
        self.wake()

    # Resuming: the async iterable is read again from its start and the
    # records this kernel had handed on are skipped (the source must yield
    # the same records in the same order again: a replayable input).
    def on_epoch(self, epoch):
        return {"emitted": self._emitted}

    def restore(self, snapshot):
        self._emitted = self._skip = snapshot["emitted"]

    def poll(self):
        if not self._reader_started:
            self._reader_started = True
            self.context.kernel.spawn(self._read(self._source), name=f"{self.name} reader")
            return None  # the reader wakes this source when it has records
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._emitted += len(batch)
            self.emit(batch)
            space = self._space
            if space is not None and not space.done():
                space.set_result(None)
        if self._exhausted:
            return False
        return None
