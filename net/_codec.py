"""Encoding batches once per batch: msgspec where it is exact, pickle otherwise.

msgpack (via msgspec) encodes flat records several times faster than pickle,
but it cannot tell a tuple from a list, so it is used only where the round
trip is exact: a batch whose records are all plain scalars (`str`, `int`,
`float`, `bool`, `None`, `bytes`), or a batch whose records are all tuples of
plain scalars (the `(key, value)` pairs an exchange carries), decoded straight
back into tuples by a typed decoder. Anything else, or a scalar msgpack cannot
hold (an int beyond 64 bits), goes through pickle (protocol 5), so a record
arrives on another kernel exactly as it left. Checking the types is C-level
passes (`set(map(type, ...))`); it costs more than msgspec's encoding itself
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
from itertools import chain

import msgspec

from ._batch import IDLE, EpochMarker, TimedBatch

KIND_SCALARS = 1  # msgpack array of scalars
KIND_TUPLES = 2  # msgpack array of arrays, decoded as a list of tuples
KIND_PICKLE = 3  # pickle of the list
KIND_WATERMARK = 4  # float64
KIND_END = 5  # no body
KIND_IDLE = 6  # no body
KIND_EPOCH = 7  # u64 epoch number
TIMED = 0x80  # flag: timestamps precede the records' body

HEADER = struct.Struct("<BI")
_WATERMARK = struct.Struct("<d")
_COUNT = struct.Struct("<I")
_EPOCH = struct.Struct("<Q")
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None), bytes})
_JUST_TUPLES = {tuple}

_encoder = msgspec.msgpack.Encoder()
_decode = msgspec.msgpack.Decoder().decode
_decode_tuples = msgspec.msgpack.Decoder(list[tuple]).decode


# Below this many records a plain loop checks the types faster than building
# sets (whose fixed cost is a few hundred ns).
_SMALL_BATCH = 4


def _msgpack_kind(batch: list) -> int | None:
    """KIND_SCALARS or KIND_TUPLES where msgpack carries `batch` exactly, else None."""
    if len(batch) <= _SMALL_BATCH:
        tuples = scalars = False
        for record in batch:
            cls = record.__class__
            if cls is tuple:
                tuples = True
                for item in record:
                    if item.__class__ not in _SCALAR_TYPES:
                        return None
            elif cls in _SCALAR_TYPES:
                scalars = True
            else:
                return None
        if tuples:
            return None if scalars else KIND_TUPLES
        return KIND_SCALARS
    types = set(map(type, batch))
    if types <= _SCALAR_TYPES:
        return KIND_SCALARS
    if types == _JUST_TUPLES and set(map(type, chain.from_iterable(batch))) <= _SCALAR_TYPES:
        return KIND_TUPLES
    return None


def encode_batch(batch: list) -> tuple[int, bytes]:
    """(kind, body) for a list of records (or a TimedBatch)."""
    if batch.__class__ is TimedBatch:
        kind, body = _encode_records(list(batch))
        stamps = array("d", batch.timestamps).tobytes()
        return kind | TIMED, b"".join((_COUNT.pack(len(batch)), stamps, body))
    return _encode_records(batch)


def _encode_records(batch: list) -> tuple[int, bytes]:
    kind = _msgpack_kind(batch)
    if kind is not None:
        try:
            return kind, _encoder.encode(batch)
        except Exception:  # anything msgpack cannot hold goes by pickle
            pass
    return KIND_PICKLE, pickle.dumps(batch, protocol=5)


def encode_epoch(marker: EpochMarker) -> tuple[int, bytes]:
    return KIND_EPOCH, _EPOCH.pack(marker.epoch)


def encode_watermark(watermark: float) -> tuple[int, bytes]:
    return KIND_WATERMARK, _WATERMARK.pack(watermark)


def encode_progress(payload) -> tuple[int, bytes]:
    """(kind, body) for a progress payload, as `decode` gives them back: a
    float (watermark), None (end), IDLE, or an EpochMarker."""
    if payload is None:
        return KIND_END, b""
    if payload is IDLE:
        return KIND_IDLE, b""
    if payload.__class__ is EpochMarker:
        return encode_epoch(payload)
    return encode_watermark(payload)


def decode(kind: int, body):
    """The payload of a frame: a list (data), a float (watermark), None
    (end), or IDLE."""
    if kind & TIMED:
        (count,) = _COUNT.unpack_from(body)
        stamps = array("d")
        stamps.frombytes(body[4 : 4 + 8 * count])
        records = decode(kind & ~TIMED, body[4 + 8 * count :])
        return TimedBatch(records, stamps.tolist())
    if kind == KIND_TUPLES:
        return _decode_tuples(body)
    if kind == KIND_SCALARS:
        return _decode(body)
    if kind == KIND_PICKLE:
        return pickle.loads(body)
    if kind == KIND_WATERMARK:
        return _WATERMARK.unpack(body)[0]
    if kind == KIND_END:
        return None
    if kind == KIND_IDLE:
        return IDLE
    if kind == KIND_EPOCH:
        return EpochMarker(_EPOCH.unpack(body)[0])
    raise ValueError(f"unknown frame kind {kind}")
