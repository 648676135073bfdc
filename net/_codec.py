"""Encoding batches once per batch: msgspec where it is exact, pickle otherwise.

msgpack (via msgspec) encodes flat records several times faster than pickle,
but it cannot tell a tuple from a list, so it is used only where the round
trip is exact: a batch whose records are all plain scalars (`str`, `int`,
`float`, `bool`, `None`, `bytes`), or a batch whose records are all tuples of
plain scalars (the `(key, value)` pairs an exchange carries), decoded straight
back into tuples by a typed decoder. A batch of tuples of one width whose
fields are plain scalars but one, a namedtuple of plain scalars in runs of
one object (a windowed aggregate's `(key, Window, sum)` results), goes as
msgpack columns (`_encode_named_runs`). Anything else, or a scalar msgpack
cannot hold (an int beyond 64 bits), goes through pickle (protocol 5), so a record
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

import copyreg
import importlib
import io
import pickle
import struct
import sys
from array import array
from collections import deque, namedtuple
from itertools import chain, compress, islice, repeat
from operator import is_not, itemgetter, sub

import msgspec

from ._channel import IDLE, EpochMarker, RoundMarker, TimedBatch
from ._protocol import UnpicklableRecord
from .shm import TAG

KIND_SCALARS = 1  # msgpack array of scalars
KIND_TUPLES = 2  # msgpack array of arrays, decoded as a list of tuples
KIND_PICKLE = 3  # pickle of the list
KIND_WATERMARK = 4  # float64
KIND_END = 5  # no body
KIND_IDLE = 6  # no body
KIND_EPOCH = 7  # u64 epoch number
KIND_ROUND = 8  # u32 loop, u64 round, u64 count, u8 final, f64 frontier, u64 held, f64 earliest, u64 epoch,
#                u8 idle
KIND_NAMED_RUNS = 9  # msgpack columns: tuples with a namedtuple field in runs (_encode_named_runs)
KIND_WATERMARKS = 10  # u32 count, u32 channels, f64 watermarks: several at once (ChannelWatermarks)
TIMED = 0x80  # flag: timestamps precede the records' body

HEADER = TAG  # kind (u8), channel (u32): the ring packs it with a frame (push_tagged)
_WATERMARK = struct.Struct("<d")
_COUNT = struct.Struct("<I")
_EPOCH = struct.Struct("<Q")
_ROUND = struct.Struct("<IQQ?dQdQ?")
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


def _encode_records(batch: list) -> tuple[int, bytes]:
    kind = _small_kind(batch) if len(batch) <= _SMALL_BATCH else _large_kind(batch)
    if kind is not None:
        try:
            body = _encode_named_runs(batch) if kind == KIND_NAMED_RUNS else _encode(batch)
            if body is not None:
                return kind, body
        except Exception:  # anything msgpack cannot hold goes by pickle
            pass
    try:
        return KIND_PICKLE, pickle.dumps(batch, protocol=5)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a record's own __reduce__ may raise anything
        raise UnpicklableRecord(*_first_unpicklable(batch)) from exc


def _first_unpicklable(batch: list) -> tuple[bool, object]:
    """(found, record): the batch's first record that pickle refuses. Only
    on the error path: pickling record by record costs more than the batch."""
    for record in batch:
        try:
            pickle.dumps(record, protocol=5)
        except KeyboardInterrupt:
            raise
        except BaseException:
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


# A batch of more records is checked a slice of this many at a time: the
# check's lists (every field, their types, the expected pattern) then stay
# small and in cache, where over a whole batch of 500,000 `(int, str,
# float)` results (`collect()` on two kernels) they were lists of 1,500,000
# on fresh pages: 46-60 ms against 35 by slices (timeit), 81 against 63 in a
# forked kernel.
_CHECKED_AT_ONCE = 4096


def _large_kind(batch: list) -> int | None:
    """`_batch_kind` of a batch, in slices of at most _CHECKED_AT_ONCE
    records: the kind all of them agree on (tuples or scalars), the first
    slice's where it settles the batch (named runs: `_encode_named_runs`
    checks every record itself), else None (pickle)."""
    n = len(batch)
    if n <= _CHECKED_AT_ONCE:
        return _batch_kind(batch)
    kind = _batch_kind(batch[:_CHECKED_AT_ONCE])
    if kind not in (KIND_TUPLES, KIND_SCALARS):
        return kind
    for start in range(_CHECKED_AT_ONCE, n, _CHECKED_AT_ONCE):
        if _batch_kind(batch[start : start + _CHECKED_AT_ONCE]) != kind:
            return None
    return kind


def _batch_kind(batch: list) -> int | None:
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
    # pickle, or columns where one field is a namedtuple
    # (`_encode_named_runs` checks every record then), without a pass over
    # every field first (a window's `(key, Window, sum)` results, collected:
    # ~25 of a 63,000-triple batch's ~60 ms went into the pass that then failed).
    pattern = list(map(type, batch[0]))
    if not _SCALAR_TYPES.issuperset(pattern):
        return KIND_NAMED_RUNS if _named_field(pattern) is not None else None
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


# -- tuples with a namedtuple field in runs ------------------------------------------
#
# A windowed aggregate's results, `(key, Window, sum)`, share one `Window` a
# window fired, in a run of consecutive records, and their keys repeat from
# one window to the next. Pickle carries them exactly, but writes every key
# string again (they are distinct objects, from distinct events) and the
# caller's process builds a str for each: in a two-kernel windowed sum
# (benches/pipelines.py) the kernels' ~31,000 results took ~19 ms each to
# pickle and the caller ~22 ms to unpickle both kernels', most of it page
# faults on fresh memory. So: the other fields as columns, a column of str
# as a table of its distinct strings and an index per record, the
# namedtuples once a run with its length, rebuilt as pickle would
# (`cls.__new__(cls, *fields)`) and put together by `zip`: C-level passes,
# Python only per run and per distinct string. Where runs are short, pickle.

_RECORDS_A_RUN = 4  # fewer records a run on average: pickle
_CACHED_CLASSES = 1024  # classes the cache below holds at most (then it starts again)

# class -> "module:qualname" when its instances are rebuilt by pickle as
# `cls.__new__(cls, *fields)`, None when not (what the class itself says:
# whether its name still finds it, or copyreg has a reducer for it, is
# looked up for each batch)
_NAMED_CLASSES: dict[type, str | None] = {}


def _named_field(pattern: list) -> int | None:
    """The place of the one field type in `pattern` (a record's) that is a
    namedtuple carried by its fields (`_carried_name`), the others plain
    scalars; None otherwise."""
    at = None
    for i, cls in enumerate(pattern):
        if cls in _SCALAR_TYPES:
            continue
        if at is not None or _carried_name(cls) is None:
            return None
        at = i
    return at


def _namedtuple_new_args():
    """The code of the `__getnewargs__` every namedtuple class is given."""
    return namedtuple("_Probe", "a").__getnewargs__.__code__


_NAMEDTUPLE_NEW_ARGS = _namedtuple_new_args()


def _carried_name(cls: type) -> str | None:
    """`cls`'s "module:qualname" where its instances round-trip as their
    fields, as pickle would rebuild them: a namedtuple with no instance
    dict, no reduce, state or new-arguments of its own, no reducer in
    `copyreg.dispatch_table`, found again by its name now (not a class made
    inside a function; not one whose name a notebook's cell has since given
    to a new class: pickle refuses those); else None."""
    try:
        name = _NAMED_CLASSES[cls]
    except KeyError:
        name = None
        if (issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple)
                and cls.__dictoffset__ == 0
                and cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
                and cls.__getstate__ is object.__getstate__
                and not hasattr(cls, "__getnewargs_ex__")
                and getattr(getattr(cls, "__getnewargs__", None), "__code__", None) is _NAMEDTUPLE_NEW_ARGS):
            name = f"{cls.__module__}:{cls.__qualname__}"
        if len(_NAMED_CLASSES) >= _CACHED_CLASSES:  # classes made on the fly must not pile up here
            _NAMED_CLASSES.clear()
        _NAMED_CLASSES[cls] = name
    if name is None or cls in copyreg.dispatch_table:
        return None
    try:
        found = _class_named(name)
    except Exception:  # not importable by its name: pickle would fail on it too, or find another
        return None
    return name if found is cls else None


def _class_named(name: str) -> type:
    """The class "module:qualname" names now (as pickle's `find_class`,
    for each batch: a name may be given to another class meanwhile)."""
    module, _, qualname = name.partition(":")
    found = sys.modules.get(module)
    if found is None:
        found = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _encode_named_runs(batch: list) -> bytes | None:
    """The body of a KIND_NAMED_RUNS frame, or None (pickle it): `batch`'s
    records are tuples of one width; the field where the first record has
    a namedtuple is an instance of that class with plain scalar fields in
    every record, in runs of one object of at least _RECORDS_A_RUN records
    on average; every other field is a plain scalar. Runs are of one
    object (`is`), not of equal ones: `Window(0, 1)` equals
    `Window(0.0, 1.0)` but must not come back as it. Likewise only a column
    of nothing but `str` becomes a table (1 == 1.0 == True as dict keys).

    Every step is a C-level pass over the batch or a column. A run's
    records hold the very object its first does, so the namedtuples' class
    and fields are checked once a run, and runs are found by comparing
    neighbours' identity (a set and a `groupby` of every record's `id`
    before: 126,000 `(str, Window, int)` results, timeit, 38 -> 28 ms; in a
    kernel, on results made over the whole run, the passes wait on memory
    and the 60,000 of a windowed sum took 16-23 ms either way, half of it
    the str column's table; `zip(*batch)` for the columns costs 14 ms, an
    iterator per record)."""
    first = batch[0]
    width = len(first)
    at = _named_field(list(map(type, first)))
    # every record a tuple (past a large batch's first slice, `_large_kind`
    # checked none: a list there came back as a tuple)
    if at is None or list(map(type, batch)).count(tuple) != len(batch):
        return None
    try:  # every record has `width` fields at least...
        columns = [list(map(itemgetter(i), batch)) for i in range(width)]
    except IndexError:
        return None
    if sum(map(len, batch)) != width * len(batch):  # ...and none has more
        return None
    named = columns[at]
    n = len(named)
    most = n // _RECORDS_A_RUN  # too many runs: short runs go by pickle (a session window's results)
    starts = list(compress(range(1, n), map(is_not, islice(named, 1, None), named)))
    if len(starts) >= most:
        return None
    starts.insert(0, 0)
    lengths = list(map(sub, [*islice(starts, 1, None), n], starts))
    runs = [named[start] for start in starts]
    cls = type(runs[0])
    # one object in runs apart (A, B, A) comes back from pickle as one (its
    # memo); here it would be one a run
    if set(map(type, runs)) != {cls} or len(set(map(id, runs))) != len(runs):
        return None
    heads = list(map(tuple, runs))
    if not _SCALAR_TYPES.issuperset(map(type, chain.from_iterable(heads))):
        return None
    del columns[at]
    tables = []
    for i, column in enumerate(columns):
        types = set(map(type, column))
        table = None
        if types == {str}:
            table = list(dict.fromkeys(column))
            columns[i] = list(map({text: k for k, text in enumerate(table)}.__getitem__, column))
        elif not _SCALAR_TYPES.issuperset(types):
            return None
        tables.append(table)
    return _encode((_carried_name(cls), at, lengths, heads, columns, tables))


def _decode_named_runs(body, renamed: dict | None = None) -> list:
    name, at, lengths, heads, columns, tables = _decode(body)
    cls = renamed[name] if renamed is not None and name in renamed else _class_named(name)
    new = cls.__new__
    for i, table in enumerate(tables):
        if table is not None:
            columns[i] = list(map(table.__getitem__, columns[i]))
    named = [new(cls, *fields) for fields in heads]
    columns.insert(at, list(chain.from_iterable(map(repeat, named, lengths))))
    return list(zip(*columns))


def encode_epoch(marker: EpochMarker) -> tuple[int, bytes]:
    return KIND_EPOCH, _EPOCH.pack(marker.epoch)


def encode_watermark(watermark: float) -> tuple[int, bytes]:
    return KIND_WATERMARK, _WATERMARK.pack(watermark)


class ChannelWatermarks(tuple):
    """`(channel, watermark)` pairs that went in one frame: the latest
    watermark of each of a kernel's exchange edges, past two kernels
    (`kernel.runtime._exchange.WatermarkPacer`). The frame's own channel
    means nothing; the reader delivers each pair as if it had come alone."""

    __slots__ = ()


def encode_watermarks(pairs) -> tuple[int, bytes]:
    """(kind, body) of one frame for several `(channel, watermark)` pairs."""
    channels, watermarks = zip(*pairs)
    count = len(channels)
    return KIND_WATERMARKS, struct.pack(f"<I{count}I{count}d", count, *channels, *watermarks)


def _decode_watermarks(body) -> ChannelWatermarks:
    (count,) = _COUNT.unpack_from(body)
    fields = struct.unpack_from(f"<{count}I{count}d", body, 4)
    return ChannelWatermarks(zip(fields[:count], fields[count:]))


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
    KIND_NAMED_RUNS: _decode_named_runs,
    KIND_WATERMARKS: _decode_watermarks,
}
DECODERS.update({kind | TIMED: _timed(DECODERS[kind])
                  for kind in (KIND_SCALARS, KIND_TUPLES, KIND_PICKLE, KIND_NAMED_RUNS)})


def renamed_decoder(name: str, cls: type):
    """`decode`, reading the class `name` ("module.qualname", as another
    process named it: `__main__.X` in a script, `pipeline.X` in a job) as
    `cls` wherever a batch names it (by pickle, or a namedtuple's runs)."""
    class Renamed(pickle.Unpickler):
        def find_class(self, module, qualname):
            if f"{module}.{qualname}" == name:
                return cls
            return super().find_class(module, qualname)

    def loads(body):
        return Renamed(io.BytesIO(body)).load()

    class Carried(dict):  # a namedtuple's runs name it "module:qualname"
        def __contains__(self, carried) -> bool:
            return carried.replace(":", ".", 1) == name

        def __getitem__(self, carried) -> type:
            return cls

    renamed = Carried()
    overrides = {KIND_PICKLE: loads, KIND_NAMED_RUNS: lambda body: _decode_named_runs(body, renamed)}
    overrides.update({kind | TIMED: _timed(decoder) for kind, decoder in list(overrides.items())})

    def decode_renamed(kind: int, body):
        decoder = overrides.get(kind)
        return decode(kind, body) if decoder is None else decoder(body)

    return decode_renamed
