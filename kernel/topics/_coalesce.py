"""Coalescing the batches queued for one subscriber into fewer, larger
frames, as the publisher's writer takes them (`_publish.Publish._write`).

Why: a frame costs its websocket write, a system call (~7 us here), on
top of encoding its records. At 100 records a batch that write was a
quarter of the publisher's CPU (py-spy, benches/topics.py), and it is paid
again for every subscriber. When a subscriber's queue holds several
batches (the writer is behind: throughput, not latency, is what counts
then) they go as one frame of up to MAX_BYTES, where each is small
(JOIN_BELOW: a larger frame's write is a small part of its cost, and
joined frames cost the subscriber more). Nothing is re-encoded: the
codec's msgpack arrays are joined under one array header, and the
timestamps of timed batches laid end to end.

Only batches the codec wrote with msgpack (`KIND_SCALARS`,
`KIND_TUPLES`, timed or not) of one kind are joined. A watermark between
two timed batches is crossed (the last one crossed is sent after the
joined frame) only when none of the records joined after it is below it:
a record late before is late after, and none becomes late. Epoch markers and the end are never
crossed (whole epochs stay whole).
"""

from __future__ import annotations

import struct
from array import array
from collections import deque

from kernel.net._codec import KIND_SCALARS, KIND_TUPLES, KIND_WATERMARK, TIMED

MAX_BYTES = 256 << 10  # a joined frame's body at most (a batch that would pass it is not joined)
# A frame this large or larger goes alone. Its write is a small part of its
# cost already, and joined frames cost the subscriber more a record: at
# 1,000 `(int, str)` a batch (~11 kB frames) joining up to 256 KiB gave
# 12.0 M records/s against 13.8 M a frame a batch, the subscriber 84 against
# 72 ns a record (benches/topics.py --joining 7; up to 64 KiB, 12.3 against
# 14.0 M); at 100 a batch (~1 kB) joining pays, +16-23%.
JOIN_BELOW = 4 << 10
JOINABLE = frozenset((KIND_SCALARS, KIND_TUPLES, KIND_SCALARS | TIMED, KIND_TUPLES | TIMED))
_COUNT = struct.Struct("<I")  # a timed body's record count (net._codec)
_WATERMARK = struct.Struct("<d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def take(kind: int, body, queue: deque) -> tuple[list, list]:
    """The frames to send for the frame `(kind, body)` just taken from
    `queue`: the batches after it that can join it, taken from `queue` too.
    Returns (frames to send, the frames taken from the queue)."""
    taken: list = []
    parts = [body]
    size = len(body)
    if size >= JOIN_BELOW:
        return [(kind, body)], taken
    crossed = None  # the last watermark crossed: sent after the joined frame
    floor = float("-inf")  # its value: no record joined after it may be below it
    timed = kind & TIMED
    while queue and size < MAX_BYTES:
        nkind, nbody = queue[0]
        if nkind == kind:
            step = 1
            if crossed is not None and _least_stamp(nbody) < floor:
                break  # late behind the watermark crossed: it stays late
        elif nkind == KIND_WATERMARK and timed and len(queue) > 1 and queue[1][0] == kind:
            nbody = queue[1][1]
            watermark = max(floor, _WATERMARK.unpack(queue[0][1])[0])
            if _least_stamp(nbody) < watermark:
                break  # a record late behind that watermark stays late
            floor = watermark
            step = 2
        else:
            break
        if size + len(nbody) > MAX_BYTES:
            # (it would pass MAX_BYTES: it goes as it is. A batch near the
            # 16 MiB a subscriber takes in one frame, joined behind a small
            # one, made a frame over it, as a review found)
            break
        for _ in range(step):
            frame = queue.popleft()
            taken.append(frame)
            if frame[0] == KIND_WATERMARK:
                crossed = frame
        parts.append(nbody)
        size += len(nbody)
    if len(parts) == 1:
        return [(kind, body)], taken
    frames = [(kind, _join_timed(parts) if timed else _join_arrays(parts))]
    if crossed is not None:
        frames.append(crossed)
    return frames, taken


def _least_stamp(body) -> float:
    (count,) = _COUNT.unpack_from(body)
    stamps = array("d")
    stamps.frombytes(body[4 : 4 + 8 * count])
    return min(stamps, default=float("inf"))


def _join_timed(bodies: list) -> bytes:
    counts = [_COUNT.unpack_from(b)[0] for b in bodies]
    stamps = [memoryview(b)[4 : 4 + 8 * n] for b, n in zip(bodies, counts)]
    records = _join_arrays([memoryview(b)[4 + 8 * n :] for b, n in zip(bodies, counts)])
    return b"".join((_COUNT.pack(sum(counts)), *stamps, records))


def _join_arrays(bodies: list) -> bytes:
    """msgpack arrays -> one array of all their items, in order."""
    total = 0
    items = []
    for body in bodies:
        n, start = _array_header(body)
        total += n
        items.append(memoryview(body)[start:])
    return b"".join((_array_head(total), *items))


def _array_header(body) -> tuple[int, int]:
    """(items, where they start) of a msgpack array."""
    first = body[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F, 1
    if first == 0xDC:
        return _U16.unpack_from(body, 1)[0], 3
    if first == 0xDD:
        return _U32.unpack_from(body, 1)[0], 5
    raise ValueError(f"not a msgpack array (first byte {first:#x})")


def _array_head(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + _U16.pack(n)
    return b"\xdd" + _U32.pack(n)
