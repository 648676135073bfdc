"""Encoding batches once per batch: msgspec where it is exact, pickle otherwise.

msgpack (via msgspec) encodes flat records several times faster than pickle,
but it cannot tell a tuple from a list, so it is used only where the round
trip is exact: a batch whose records are all plain scalars (`str`, `int`,
`float`, `bool`, `None`, `bytes`), or a batch whose records are all tuples of
plain scalars (the `(key, value)` pairs an exchange carries), decoded straight
back into tuples by a typed decoder. Anything else, or a scalar msgpack cannot
hold (an int beyond 64 bits), goes through pickle (protocol 5), so a record
arrives on another kernel exactly as it left: an IntEnum, a str subclass or a
namedtuple does not silently become an int, a str or a tuple. Checking the
types is C-level passes over the records and their fields (`list(map(type,
...))`, compared or counted); it costs more than msgspec's encoding itself
(benches/channels.py, section 2), but less than pickling.

A frame is a 5-byte header, kind (u8) and channel (u32), then the body.
A batch with event timestamps (`TimedBatch`) sets the TIMED bit of the kind;
its body starts with the timestamps as float64s (count u32, then the array),
then the records' body.
"""

from __future__ import annotations

import pickle
import struct
from array import array
from collections import deque
from itertools import chain

import msgspec

from ._channel import IDLE, EpochMarker, RoundMarker, TimedBatch
from .shm import TAG

KIND_SCALARS = 1  # msgpack array of scalars
KIND_TUPLES = 2  # msgpack array of arrays, decoded as a list of tuples
KIND_PICKLE = 3  # pickle of the list
KIND_WATERMARK = 4  # float64
KIND_END = 5  # no body
KIND_IDLE = 6  # no body
KIND_EPOCH = 7  # u64 epoch number
KIND_ROUND = 8  # u32 loop, u64 round, u64 count, u8 final, f64 frontier, u64 held, f64 earliest, u64 epoch
TIMED = 0x80  # flag: timestamps precede the records' body

HEADER = TAG  # kind (u8), channel (u32): the ring packs it with a frame (push_tagged)
_WATERMARK = struct.Struct("<d")
_COUNT = struct.Struct("<I")
_EPOCH = struct.Struct("<Q")
_ROUND = struct.Struct("<IQQ?dQdQ")
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None), bytes})

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_decode_tuples = msgspec.msgpack.Decoder(list[tuple]).decode


def encode_batch(batch: list) -> tuple[int, bytes]:
    """(kind, body) for a list of records (or a TimedBatch)."""
    # One (scalar, scalar) pair, the record key_by makes, checked inline: the
    # general path's calls and loop cost ~140 ns more a message (timeit: 329
    # -> ~190 ns), a seventh of the 1 us a message the ring's target allows
    # at one record per message (benches/channels.py).
    if len(batch) == 1 and type(batch) is list:
        record = batch[0]
        if type(record) is tuple and len(record) == 2:
            key, value = record
            if type(key) in _SCALAR_TYPES and type(value) in _SCALAR_TYPES:
                try:
                    return KIND_TUPLES, _encode(batch)
                except Exception:  # an int beyond 64 bits, a lone surrogate: below, by pickle
                    pass
    if type(batch) is TimedBatch:
        kind, body = _encode_records(list(batch))
        stamps = array("d", batch.timestamps).tobytes()
        return kind | TIMED, b"".join((_COUNT.pack(len(batch)), stamps, body))
    return _encode_records(batch)


class UnpicklableRecord(Exception):
    """A batch that neither msgpack nor pickle can carry to another kernel.

    `record` is the first record that pickle refuses on its own (`found`
    False when none does: only the batch as a whole failed, too deep, say).
    Pickle's own error is the `__cause__`.
    """

    def __init__(self, found: bool, record: object) -> None:
        super().__init__("a record that crosses kernels cannot be pickled")
        self.found = found
        self.record = record


def _encode_records(batch: list) -> tuple[int, bytes]:
    kind = _small_kind(batch) if len(batch) <= _SMALL_BATCH else _large_kind(batch)
    if kind is not None:
        try:
            return kind, _encode(batch)
        except Exception:  # anything msgpack cannot hold goes by pickle
            pass
    try:
        return KIND_PICKLE, pickle.dumps(batch, protocol=5)
    except Exception as exc:
        raise UnpicklableRecord(*_first_unpicklable(batch)) from exc


def _first_unpicklable(batch: list) -> tuple[bool, object]:
    """(found, record): the batch's first record that pickle refuses. Only
    on the error path: pickling record by record costs more than the batch."""
    for record in batch:
        try:
            pickle.dumps(record, protocol=5)
        except Exception:
            return True, record
    return False, None


# Below this many records a plain loop checks the types faster than building
# lists and sets (whose fixed cost is a few hundred ns).
_SMALL_BATCH = 4


def _small_kind(batch: list) -> int | None:
    """KIND_SCALARS or KIND_TUPLES where msgpack carries `batch` exactly, else None."""
    tuples = scalars = False
    for record in batch:
        cls = type(record)
        if cls is tuple:
            tuples = True
            for item in record:
                if type(item) not in _SCALAR_TYPES:
                    return None
        elif cls in _SCALAR_TYPES:
            scalars = True
        else:
            return None
    if tuples:
        return None if scalars else KIND_TUPLES
    return KIND_SCALARS


_exhaust = deque(maxlen=0).extend  # runs an iterator to its end, at C speed
# From this many tuples on, one flat list of their fields checks them faster
# than a set of the fields' types (timeit: 10 pairs 1.16 us by the set, 1.29 by
# the list; 20 pairs 1.95 and 1.86; 100 pairs 7.9 and 6.6).
_FLAT_FROM = 16

# The last batch's pattern of field types, repeated for each of its records:
# built again only when a batch's first record or length differs (building it
# for every batch of 1000 pairs costs ~3 ns a record, ~5% of the ring's rate
# at 1000 records per message; benches/channels.py). It only ever holds plain
# scalar types, so whatever batch it is compared with, equality proves exact.
_expected: tuple[list | None, int, list] = (None, 0, [])


def _large_kind(batch: list) -> int | None:
    """`_small_kind` for a batch of more records, checked by C-level passes.

    Per record of a batch of 1000 `(int, str)` pairs, in one process
    (benches/channels.py, section 2, and timeit): a list of the records'
    types and `count` ~10 ns (a set of them ~30); every field into one flat
    list by `list.extend` ~17 (`chain.from_iterable` ~36, `zip(*batch)` ~30:
    an iterator per record); the fields' types, compared with the first
    record's repeated, ~22. The check takes ~50 ns, msgspec's encoding ~16,
    its decoding of the same records ~66.
    """
    n = len(batch)
    types = list(map(type, batch))
    first = types[0]
    if types.count(first) != n:  # records of several types: scalars only
        return KIND_SCALARS if set(types) <= _SCALAR_TYPES else None
    if first is not tuple:
        return KIND_SCALARS if first in _SCALAR_TYPES else None
    # The first record settles a batch whose records are not all plain:
    # pickle it is, without a pass over every field first (a window's
    # `(key, Window, sum)` results, collected: ~25 of a 63,000-triple
    # batch's ~60 ms went into the pass that then failed).
    pattern = list(map(type, batch[0]))
    if not _SCALAR_TYPES.issuperset(pattern):
        return None
    if n < _FLAT_FROM:  # fewer steps, so less fixed cost, but ~30 ns a field
        return KIND_TUPLES if set(map(type, chain.from_iterable(batch))) <= _SCALAR_TYPES else None
    fields: list = []
    _exhaust(map(fields.extend, batch))
    field_types = list(map(type, fields))
    # Most batches repeat the first record's field types; which record a field
    # belongs to does not matter, only that every one is a plain scalar.
    global _expected
    last_pattern, last_n, expected = _expected
    if last_n != n or last_pattern != pattern:
        expected = pattern * n
        _expected = (pattern, n, expected)
    if field_types == expected:
        return KIND_TUPLES
    return KIND_TUPLES if set(field_types) <= _SCALAR_TYPES else None


def encode_epoch(marker: EpochMarker) -> tuple[int, bytes]:
    return KIND_EPOCH, _EPOCH.pack(marker.epoch)


def encode_watermark(watermark: float) -> tuple[int, bytes]:
    return KIND_WATERMARK, _WATERMARK.pack(watermark)


def encode_progress(payload) -> tuple[int, bytes]:
    """(kind, body) for a progress payload, as `decode` gives them back: a
    float (watermark), None (end), IDLE, an EpochMarker or a RoundMarker."""
    if payload is None:
        return KIND_END, b""
    if payload is IDLE:
        return KIND_IDLE, b""
    if payload.__class__ is EpochMarker:
        return encode_epoch(payload)
    if payload.__class__ is RoundMarker:
        return KIND_ROUND, _ROUND.pack(*payload._fields())
    return encode_watermark(payload)


def decode(kind: int, body):
    """The payload of a frame: a list (data), a float (watermark), None
    (end), IDLE, or an EpochMarker."""
    # A dict of decoders by kind, rather than a chain of comparisons (timeit,
    # one pair with its header strip: 292 -> 259 ns; benches/channels.py).
    try:
        decoder = DECODERS[kind]
    except KeyError:
        raise ValueError(f"unknown frame kind {kind}") from None
    return decoder(body)


def _timed(decode_records):
    def decode_timed(body) -> TimedBatch:
        (count,) = _COUNT.unpack_from(body)
        stamps = array("d")
        stamps.frombytes(body[4 : 4 + 8 * count])
        return TimedBatch(decode_records(body[4 + 8 * count :]), stamps.tolist())

    return decode_timed


DECODERS = {
    KIND_SCALARS: _decode,
    KIND_TUPLES: _decode_tuples,
    KIND_PICKLE: pickle.loads,
    KIND_WATERMARK: lambda body: _WATERMARK.unpack(body)[0],
    KIND_END: lambda body: None,
    KIND_IDLE: lambda body: IDLE,
    KIND_EPOCH: lambda body: EpochMarker(_EPOCH.unpack(body)[0]),
    KIND_ROUND: lambda body: RoundMarker(*_ROUND.unpack(body)),
}
DECODERS.update({kind | TIMED: _timed(DECODERS[kind])
                  for kind in (KIND_SCALARS, KIND_TUPLES, KIND_PICKLE)})
