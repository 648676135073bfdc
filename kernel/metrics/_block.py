"""One kernel process's metrics, handed to its launcher in shared memory.

The block is an anonymous shared mapping made by the launcher before it
forks the kernels, so each kernel inherits it and nothing is ever left in
/dev/shm. Layout::

    offset  0: sequence u64 (odd while the kernel writes)
    offset  8: length   u64 of the snapshot's bytes
    offset 16: the snapshot, msgpack

A seqlock: the kernel (the only writer) makes the sequence odd, writes the
snapshot and its length, then makes it even again; the launcher reads the
sequence, copies the bytes, and keeps them only if the sequence is the same
even number afterwards. Like the rings (net/shm.py), this relies on x86-64
keeping stores in order and loads in order, and on CPython writing a u64
slot with one aligned store.

Why a block and not messages: the launcher reads it only when scraped, and
the kernel's part is one small encode every `PUBLISH_INTERVAL`, whatever
the scrape rate, with no pipe to drain and nothing to block on.
"""

from __future__ import annotations

import mmap
import re
import time

import msgspec

PUBLISH_INTERVAL = 0.1  # seconds between two snapshots a kernel process publishes
BLOCK_BYTES = 1 << 20  # address space only: pages are touched as far as a snapshot reaches
_HEADER = 16
_SEQUENCE, _LENGTH = 0, 1
_READ_TRIES = 1000


class MetricsBlock:
    """A kernel's published snapshot: `write` in the kernel, `read` in the launcher."""

    def __init__(self, size: int = BLOCK_BYTES) -> None:
        self.size = size
        self._map = mmap.mmap(-1, size)  # MAP_SHARED: a forked kernel writes what we read
        self._slots = memoryview(self._map)[:_HEADER].cast("Q")
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder().decode
        self._last: dict | None = None  # the launcher's last good read

    def write(self, snapshot: dict) -> bool:
        """Publish `snapshot` (plain data); False when it does not fit
        (the previous one stays)."""
        try:
            data = self._encode(snapshot)
        except UnicodeEncodeError:  # a name with a lone surrogate: os.fsdecode of a non-UTF-8 file name
            data = self._encode(without_surrogates(snapshot))
        if len(data) > self.size - _HEADER:
            return False
        slots = self._slots
        sequence = slots[_SEQUENCE]
        slots[_SEQUENCE] = sequence + 1
        self._map[_HEADER:_HEADER + len(data)] = data
        slots[_LENGTH] = len(data)
        slots[_SEQUENCE] = sequence + 2
        return True

    def read(self) -> dict | None:
        """The latest snapshot (None: none written yet). A read that keeps
        meeting a write under way gives the previous one."""
        slots = self._slots
        for attempt in range(_READ_TRIES):
            sequence = slots[_SEQUENCE]
            if sequence == 0:
                return None
            if not sequence & 1:
                length = slots[_LENGTH]
                data = self._map[_HEADER:_HEADER + length]
                if slots[_SEQUENCE] == sequence:
                    self._last = self._decode(data)
                    return self._last
            if attempt % 64 == 63:
                time.sleep(0)  # the writer was preempted mid-write: let it finish
        return self._last

    def close(self) -> None:
        self._slots.release()
        self._map.close()


_SURROGATE = re.compile("[\ud800-\udfff]")


def without_surrogates(value):
    """`value` (plain data) with every lone surrogate in its strings made
    U+FFFD, the replacement character: UTF-8 (msgpack's strings, the
    exposition) has no encoding for them, and os.fsdecode makes them of the
    bytes of a file name that are not UTF-8 ("log\\xff" -> "log\\udcff")."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {without_surrogates(k): without_surrogates(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_surrogates(v) for v in value]
    return value
