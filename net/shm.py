"""Shared-memory SPSC rings and the eventfd doorbells that wake parked kernels.

`SpscRing`: one producer process, one consumer process, variable-size frames,
wrap-around, no locks.

Layout of a ring segment (a file in /dev/shm mapped by both processes, or
anonymous shared memory inherited through fork: `create_inherited`)::

    offset   0: head  u64  bytes consumed so far (written by the consumer only)
    offset  64: tail  u64  bytes produced so far (written by the producer only)
    offset 128: capacity u64, magic u64
    offset 192: producer_waiting u64 (the producer found the ring full)
    offset 256: data, `capacity` bytes (a power of two)

head and tail only grow; `position & (capacity - 1)` is the offset in the data
area. They sit on separate cache lines so the two processes do not contend for
one line on every frame. A frame is a u64 length followed by the payload,
padded to 8 bytes, so every length word is 8-aligned. A frame that would cross
the end of the data area is preceded by a wrap marker (length 2**64 - 1) and
starts again at offset 0.

Why the publication order is safe
---------------------------------
The producer writes the frame (length and payload), then stores the new tail;
the consumer loads the tail, then reads the frame, then stores the new head.
Both indices are 8-aligned u64 slots written through a memoryview cast to 'Q',
which CPython stores with one 8-byte `memcpy` of a constant size, compiled to
a single aligned `mov`, so no reader ever sees a torn index. On x86-64 (TSO),
stores become visible to other cores in program order and loads are not
reordered with older loads: a consumer that sees the new tail therefore sees
the frame written before it, and a producer that sees the new head knows the
consumer is done with the bytes before it (the consumer's reads of a frame
precede its head store, and x86 does not reorder a store before an older
load). We support x86-64 only: on weakly ordered CPUs (aarch64, POWER) the
same code would need release/acquire fences that pure Python cannot issue, so
`SpscRing.create` refuses to run there rather than corrupt data quietly.

Parking
-------
A consumer with nothing to read spins briefly, then parks: it sets `parked`
in its `Doorbell`, re-checks its rings, and waits on an eventfd registered
with its event loop. A producer rings the doorbell (writes the eventfd) only
when `parked` is set. That is the classic store-then-load handshake (Dekker):
x86 may let a load overtake an older store, so both sides execute a full fence
(a locked instruction: acquiring and releasing an uncontended
`threading.Lock`) between their store and their load, which makes a lost
wakeup impossible.
"""

from __future__ import annotations

import math
import mmap
import os
import platform
import struct
import threading

_SLOT_HEAD = 0
_SLOT_TAIL = 8
_SLOT_CAPACITY = 16
_SLOT_MAGIC = 17
_SLOT_PRODUCER_WAITING = 24
_HEADER_BYTES = 256
_MAGIC = 0x474E4952_43535053  # b"SPSCRING" read as a little-endian u64
_WRAP = (1 << 64) - 1
_SHM_DIR = "/dev/shm"
_SUPPORTED_MACHINES = ("x86_64", "AMD64", "amd64")

_fence_lock = threading.Lock()
# Frames up to this size are written by one cached struct layout per
# (length, head length); larger ones by slice assignment (the copy dominates).
_PACKED_FRAME_MAX = 4096
# keyed `(length << 13) | head length`: both at most _PACKED_FRAME_MAX, so
# two pairs never share a key (`<< 8` mixed up heads of 256 bytes and more)
_FRAME_LAYOUTS: dict[int, struct.Struct] = {}
# pop() returns frames up to this size as bytes (a copy), larger ones as a
# view into the ring (no copy).
_COPY_MAX = 512
# The transport's frame header, a u8 kind and a u32 channel, which
# `push_tagged` packs with the frame (net/_codec.py's HEADER is this one).
TAG = struct.Struct("<BI")
_TAGGED_LAYOUTS: dict[int, struct.Struct] = {}


def full_fence() -> None:
    """A full memory barrier (a lock-prefixed instruction on x86-64)."""
    _fence_lock.acquire()
    _fence_lock.release()


def _check_platform() -> None:
    if platform.machine() not in _SUPPORTED_MACHINES:
        raise RuntimeError(
            f"SpscRing needs x86-64's store ordering; this machine is {platform.machine()!r} "
            "(see net/shm.py: weakly ordered CPUs need fences pure Python cannot issue)"
        )


def _new_name(prefix: str) -> str:
    import secrets  # (here: with hmac and hashlib, ~3 ms a process that makes no segment does without)

    return f"{prefix}-{os.getpid()}-{secrets.token_hex(6)}"


def _create_segment(name: str, size: int) -> mmap.mmap:
    path = os.path.join(_SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        # (its pages reserved now: sized only, a full /dev/shm let it be
        # made, and the first write past the room left killed the writer
        # with SIGBUS; now an OSError here, ENOSPC)
        os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def _attach_segment(name: str) -> mmap.mmap:
    if "/" in name or not name:
        raise ValueError(f"invalid shared-memory name {name!r}")
    fd = os.open(os.path.join(_SHM_DIR, name), os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def _ring_capacity(capacity_bytes: int) -> int:
    if capacity_bytes <= 0:
        raise ValueError(f"capacity must be positive, got {capacity_bytes!r}")
    return max(64, 1 << (int(capacity_bytes) - 1).bit_length())


def _init_ring(segment: mmap.mmap, capacity: int) -> mmap.mmap:
    slots = memoryview(segment)[:_HEADER_BYTES].cast("Q")
    slots[_SLOT_CAPACITY] = capacity
    slots[_SLOT_MAGIC] = _MAGIC
    slots.release()
    return segment


def unlink_segment(name: str) -> bool:
    """Remove a segment by name; False if it was already gone."""
    try:
        os.unlink(os.path.join(_SHM_DIR, name))
        return True
    except FileNotFoundError:
        return False


class RingClosed(Exception):
    """The ring was closed in this process."""


class SpscRing:
    """A single-producer single-consumer ring of byte frames in shared memory.

    `push(data) -> bool` never blocks (False when full). `pop()` returns the
    next frame, or None: a small frame (up to 512 bytes) as bytes, a larger
    one as a memoryview into the ring, valid until the next `pop()` (the
    space is released then, so decoding a large frame needs no copy).
    """

    __slots__ = (
        "_closed",
        "_head",
        "_head_seen",
        "_map",
        "_mask",
        "_named",
        "_pending_release",
        "_slots",
        "_tail",
        "_tail_seen",
        "_view",
        "capacity",
        "name",
    )

    def __init__(self, name: str, segment: mmap.mmap, *, named: bool = True) -> None:
        self.name = name
        self._named = named  # False: anonymous shared memory, nothing to unlink
        self._map = segment
        self._view = memoryview(segment)
        # One u64 view of the whole segment: header slots and frame lengths.
        self._slots = self._view.cast("Q")
        if self._slots[_SLOT_MAGIC] != _MAGIC:
            self._release_views()
            raise ValueError(f"{name!r} is not an SpscRing segment")
        self.capacity = self._slots[_SLOT_CAPACITY]
        self._mask = self.capacity - 1
        self._tail = self._slots[_SLOT_TAIL]  # producer's own tail
        self._head = self._slots[_SLOT_HEAD]  # consumer's own head
        self._head_seen = self._head  # producer's last look at head
        self._tail_seen = self._tail  # consumer's last look at tail
        self._pending_release = 0
        self._closed = False

    # -- creation -------------------------------------------------------------

    @classmethod
    def create(cls, capacity_bytes: int, *, prefix: str = "spsc") -> SpscRing:
        """A new ring with at least `capacity_bytes` of data space (rounded up
        to a power of two, at least 64 bytes)."""
        _check_platform()
        capacity = _ring_capacity(capacity_bytes)
        name = _new_name(prefix)
        return cls(name, _init_ring(_create_segment(name, _HEADER_BYTES + capacity), capacity))

    @classmethod
    def create_inherited(cls, capacity_bytes: int, *, prefix: str = "spsc") -> SpscRing:
        """A ring with no name, in anonymous shared memory (`MAP_SHARED |
        MAP_ANONYMOUS`), shared with the processes forked after it is made:
        what the kernels of a run use. Nothing of it is ever in /dev/shm:
        a named segment, unlinked at once, still leaked when a Ctrl-C came
        between its creation and its unlink, and its pages counted against
        /dev/shm's size, 64 MB in a Docker or Kubernetes container by
        default: five kernels' 20 rings of 4 MiB outgrew it, and the first
        kernel to write a page past it was killed by SIGBUS mid-run."""
        _check_platform()
        capacity = _ring_capacity(capacity_bytes)
        segment = mmap.mmap(-1, _HEADER_BYTES + capacity)  # MAP_SHARED is mmap's default
        return cls(f"<anonymous {prefix}>", _init_ring(segment, capacity), named=False)

    @classmethod
    def attach(cls, name: str) -> SpscRing:
        """The ring called `name`, created by another process."""
        _check_platform()
        return cls(name, _attach_segment(name))

    @property
    def max_frame(self) -> int:
        """The largest payload a push can ever accept."""
        return self.capacity - 8

    # -- producer side --------------------------------------------------------

    def push(self, data) -> bool:
        """Append one frame; False (and nothing written) when it does not fit now."""
        return self.push2(b"", data)

    def push2(self, head, data) -> bool:
        """Append one frame made of `head + data` without joining them first
        (a transport's small header and an encoded batch)."""
        h = len(head)
        n = h + len(data)
        if n <= _PACKED_FRAME_MAX and data.__class__ is bytes:
            # The common case in a few bytecodes: a small frame that fits
            # before the end of the data area and within the free space last
            # seen: a one-pair push takes ~20% less than through the general
            # path below (735 -> 595 ns in a slow spell of the shared box,
            # best of 30 x 5,000 pushes, both in one process, interleaved).
            need = (n + 15) & ~7
            tail = self._tail
            offset = tail & self._mask
            if offset + need <= self.capacity and tail + need - self._head_seen <= self.capacity:
                layout = _FRAME_LAYOUTS.get((n << 13) | h)
                if layout is not None:
                    layout.pack_into(self._view, _HEADER_BYTES + offset, n, head, data)
                    tail += need
                    self._tail = tail
                    self._slots[_SLOT_TAIL] = tail  # publish: after the frame (x86 TSO)
                    return True
        return self._push_general(head, data, h, n)

    def _push_general(self, head, data, h: int, n: int) -> bool:
        need = (n + 15) & ~7  # u64 length + payload, padded to 8
        capacity = self.capacity
        tail = self._tail
        offset = tail & self._mask
        skip = capacity - offset if offset + need > capacity else 0
        if need + skip > capacity - (tail - self._head_seen):
            if self._closed:
                raise RingClosed(self.name)
            if need > capacity:
                raise ValueError(f"frame of {n} bytes exceeds ring capacity ({self.max_frame} max)")
            self._head_seen = self._slots[_SLOT_HEAD]
            free = capacity - (tail - self._head_seen)
            if skip and skip <= free:
                # Publish the wrap on its own, so the frame fits from offset 0
                # as soon as the consumer drains, even if it does not fit now.
                self._slots[(_HEADER_BYTES + offset) >> 3] = _WRAP
                tail += skip
                self._tail = tail
                self._slots[_SLOT_TAIL] = tail
                free -= skip
                offset = 0
                skip = 0
            if need + skip > free:
                self._slots[_SLOT_PRODUCER_WAITING] = 1
                return False
        if skip:
            self._slots[(_HEADER_BYTES + offset) >> 3] = _WRAP
            tail += skip
            offset = 0
        start = _HEADER_BYTES + offset + 8
        if n <= _PACKED_FRAME_MAX and data.__class__ is bytes:
            # Length word, head and data in one pack_into instead of a slot
            # store and two slice assignments: a one-pair frame's push2 went
            # from ~530 to ~495 ns (best of 30 x 5,000 pushes, same process).
            key = (n << 13) | h  # h <= n <= _PACKED_FRAME_MAX < 2**13: one key per pair
            layout = _FRAME_LAYOUTS.get(key)
            if layout is None:
                layout = _FRAME_LAYOUTS[key] = struct.Struct(f"<Q{h}s{n - h}s")
            layout.pack_into(self._view, start - 8, n, head, data)
        else:
            view = self._view
            self._slots[(start - 8) >> 3] = n
            if h:
                view[start : start + h] = head
            view[start + h : start + n] = data
        tail += need
        self._tail = tail
        self._slots[_SLOT_TAIL] = tail  # publish: after the frame (x86 TSO)
        return True

    def push_tagged(self, kind: int, channel: int, data) -> bool:
        """`push2(TAG.pack(kind, channel), data)` with the 5-byte tag packed
        into the frame in the same step as the data (the transport's frame
        header: a u8 kind and a u32 channel), rather than built as bytes of
        its own first: ~120 ns less a one-record message (timeit, encode +
        push of one (int, str) pair: ~680 -> ~560 ns), a fifth of what the
        1 us a message target allows (benches/channels.py)."""
        n = len(data) + 5
        need = (n + 15) & ~7
        tail = self._tail
        offset = tail & self._mask
        if (
            offset + need <= self.capacity
            and tail + need - self._head_seen <= self.capacity
            and data.__class__ is bytes
            and n <= _PACKED_FRAME_MAX
        ):
            layout = _TAGGED_LAYOUTS.get(n)
            if layout is None:
                layout = _TAGGED_LAYOUTS[n] = struct.Struct(f"<QBI{n - 5}s")
            layout.pack_into(self._view, _HEADER_BYTES + offset, n, kind, channel, data)
            tail += need
            self._tail = tail
            self._slots[_SLOT_TAIL] = tail  # publish: after the frame (x86 TSO)
            return True
        return self._push_general(TAG.pack(kind, channel), data, 5, n)

    def producer_waiting(self) -> bool:
        return bool(self._slots[_SLOT_PRODUCER_WAITING])

    # -- consumer side --------------------------------------------------------

    def pop(self):
        """The next frame (bytes, or for a frame over 512 bytes a memoryview
        valid until the next pop), or None."""
        head = self._head
        if self._pending_release:
            head += self._pending_release
            self._pending_release = 0
            self._head = head
            self._slots[_SLOT_HEAD] = head  # release the previous frame's space
        if head == self._tail_seen:
            self._tail_seen = self._slots[_SLOT_TAIL]
            if head == self._tail_seen:
                return None
        offset = head & self._mask
        n = self._slots[(_HEADER_BYTES + offset) >> 3]
        if n == _WRAP:
            head += self.capacity - offset
            self._head = head
            self._slots[_SLOT_HEAD] = head
            if head == self._tail_seen:
                self._tail_seen = self._slots[_SLOT_TAIL]
                if head == self._tail_seen:
                    return None
            offset = 0
            n = self._slots[_HEADER_BYTES >> 3]
        start = _HEADER_BYTES + offset + 8
        if n <= _COPY_MAX:
            # A small frame is copied out as bytes, and its space given back
            # at once: slicing the mmap into bytes costs less than making a
            # view, and so do the slices and decoding that follow (one-record
            # frame, its 5-byte tag stripped and decoded: ~35 ns less).
            frame = self._map[start : start + n]
            head += (n + 15) & ~7
            self._head = head
            self._slots[_SLOT_HEAD] = head  # after the copy: the producer may reuse the space
            return frame
        self._pending_release = (n + 15) & ~7
        return self._view[start : start + n]

    def release(self) -> None:
        """Give back the space of the frame returned by the last pop now."""
        if self._pending_release:
            self._head += self._pending_release
            self._pending_release = 0
            self._slots[_SLOT_HEAD] = self._head

    def clear_producer_waiting(self) -> None:
        self._slots[_SLOT_PRODUCER_WAITING] = 0

    def is_empty(self) -> bool:
        """Nothing unread (from the consumer's side)."""
        head = self._head + self._pending_release
        return head == self._slots[_SLOT_TAIL]

    def used_bytes(self) -> int:
        return self._slots[_SLOT_TAIL] - self._slots[_SLOT_HEAD]

    # -- teardown -------------------------------------------------------------

    def _release_views(self) -> None:
        self._slots.release()
        self._view.release()

    def close(self) -> None:
        """Unmap the ring in this process. A frame view from pop() that is
        still referenced keeps the mapping alive until it is dropped."""
        if self._closed:
            return
        self._closed = True
        # No room is ever seen again: push2's and push_tagged's fast paths
        # (which do not look at `_closed`, to stay a few bytecodes) fall
        # through to the general path, which raises RingClosed (they failed
        # on the released view with a bare TypeError).
        self._head_seen = -math.inf
        self._release_views()
        try:
            self._map.close()
        except BufferError:
            pass  # a caller still holds a frame view; the mapping goes with it

    def unlink(self) -> bool:
        """Remove the segment's name; mappings stay valid until closed.
        False for a ring of `create_inherited`, which has none."""
        return self._named and unlink_segment(self.name)

    def __repr__(self) -> str:
        return f"SpscRing({self.name!r}, capacity={self.capacity})"


class Doorbell:
    """Wakes a parked consumer kernel: a shared `parked` flag and an eventfd.

    Create it before forking so every process inherits the eventfd; the
    consumer registers `fd` with its event loop.
    """

    __slots__ = ("_map", "_slots", "fd", "name")

    def __init__(self) -> None:
        self.name = _new_name("bell")
        # Anonymous shared memory, inherited by the processes forked after
        # it: nothing in /dev/shm, so nothing can leak there (a named
        # segment unlinked at once still leaked when a Ctrl-C came between
        # the two).
        self._map = mmap.mmap(-1, 64)
        self._slots = memoryview(self._map).cast("Q")
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def ring(self) -> None:
        """Producer side: wake the consumer if it is parked."""
        full_fence()
        if self._slots[0]:
            try:
                os.eventfd_write(self.fd, 1)
            except BlockingIOError:  # counter saturated: a wakeup is pending anyway
                pass

    def park(self) -> None:
        """Consumer side: announce parking. Re-check the rings after this and
        before waiting on `fd`."""
        self._slots[0] = 1
        full_fence()

    def unpark(self) -> None:
        self._slots[0] = 0
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass

    @property
    def parked(self) -> bool:
        return bool(self._slots[0])

    def close(self) -> None:
        self._slots.release()
        self._map.close()
        os.close(self.fd)
