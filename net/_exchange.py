"""Key exchange: which kernel owns a key, stably across processes and machines.

`hash()` of a `str` or `bytes` is salted per process (PYTHONHASHSEED), so two
kernels would disagree about who owns a word. `stable_hash` uses CRC-32 of the
key's bytes for text and bytes, the integer itself for ints (so consecutive
int keys spread evenly), and CRC-32 of a canonical encoding for everything
else (tuples of those, floats, None...). A small per-partitioner cache keeps
the cost of a repeated key to one dict lookup: real key sets repeat a lot
(word count: 2,000,000 words, 10,000 distinct).
"""

from __future__ import annotations

import datetime
import decimal
import fractions
import io
import numbers
import pickle
import zlib
from zlib import crc32 as _crc32

from ._channel import TimedBatch

_CACHE_LIMIT = 1 << 20


def stable_hash(key) -> int:
    """A hash of `key` that is the same in every process, on every machine,
    and the same for keys that are equal (1, 1.0, True, IntEnum 1,
    Decimal(1) and Fraction(1) are one key in a dict, so they go to one
    kernel; a namedtuple goes where the equal plain tuple goes)."""
    cls = type(key)
    if cls is str:
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    if cls is int or cls is bool:
        return key & 0xFFFFFFFFFFFFFFFF
    if cls is bytes:
        return zlib.crc32(key)
    if cls is tuple:
        if len(key) == 2:  # a pair of ints, the usual composite key, in one expression
            first, second = key
            if type(first) is int and type(second) is int:
                # (masking each field first changes nothing: ^ and * keep the low 64 bits)
                return (((_PAIR_START ^ first) * 1000003) ^ second) & _MASK
        return _combine(key)
    if cls is float:
        return _float_hash(key)
    return _other_hash(key)


_MASK = 0xFFFFFFFFFFFFFFFF
_PAIR_START = 0x345678 * 1000003  # _combine's h after its first multiplication (below 2**64)


def _combine(items) -> int:
    # A tuple key that is new to a partitioner's cache is hashed every time
    # (PageRank's (vertex, round) keys: 100,000 a round, benches/loops.py),
    # so ints and strs, the usual fields, are hashed here without a call
    # each (and a pair of ints in stable_hash itself): 970 -> ~580 ns
    # for a pair of ints on the shared test machine, the same values.
    h = 0x345678
    for item in items:
        cls = type(item)
        if cls is int:
            h = ((h * 1000003) ^ item) & _MASK
        elif cls is str:
            h = ((h * 1000003) ^ zlib.crc32(item.encode("utf-8", "surrogatepass"))) & _MASK
        else:
            h = ((h * 1000003) ^ stable_hash(item)) & _MASK
    return h


def _float_hash(key: float) -> int:
    if key.is_integer():
        return int(key) & 0xFFFFFFFFFFFFFFFF  # 1.0 == 1 must land where 1 does
    if key != key:  # every NaN alike (its sign and payload are in its pickle): distinct() takes them as one
        return _NAN_HASH
    return zlib.crc32(pickle.dumps(key, protocol=4))


_NAN_HASH = zlib.crc32(pickle.dumps(float("nan"), protocol=4))


_UNSALTED_NUMBERS = (decimal.Decimal, fractions.Fraction, complex)


def _other_hash(key) -> int:
    # subclasses and other numbers: hash them as the plain value they equal
    if isinstance(key, str):
        return zlib.crc32(str.encode(key, "utf-8", "surrogatepass"))
    if isinstance(key, int):
        return int(key) & 0xFFFFFFFFFFFFFFFF
    if isinstance(key, bytes):
        return zlib.crc32(bytes(key))
    if isinstance(key, tuple):
        return _combine(key)
    if isinstance(key, frozenset):
        # equal sets may iterate in different orders: combine order-free
        return sum(stable_hash(item) for item in key) & 0xFFFFFFFFFFFFFFFF
    if isinstance(key, numbers.Number) and key == key:  # (NaN equals nothing: its pickle, below)
        if isinstance(key, complex):
            if key.imag:
                return hash(key) & _MASK  # equal to no real number (hash: as for Decimal, below)
            key = key.real  # 3+0j == 3
        try:
            as_float = float(key)
        except (TypeError, ValueError, OverflowError):
            as_float = None
        if as_float is not None and as_float == key:
            return _float_hash(as_float)  # Decimal("0.5") == 0.5, Fraction(1) == 1
        try:
            whole = int(key) if key == int(key) else None  # integral but beyond a float's precision
        except (TypeError, ValueError, OverflowError):  # a number int() does not take
            whole = None
        if whole is not None:
            return whole & 0xFFFFFFFFFFFFFFFF
        if isinstance(key, _UNSALTED_NUMBERS):
            # Equal to no float: Decimal("0.2") == Decimal("0.20") == Fraction(1, 5).
            # Python's hash of its own numbers is the same for equal ones of every
            # kind, and unsalted (the same in every process); their pickles differ
            # ("0.2", "0.20": two kernels). Not another library's numbers: theirs
            # may hash a str (a review found a Money class doing so).
            return hash(key) & _MASK
    elif isinstance(key, (datetime.datetime, datetime.time)):
        # equal instants in other zones are equal keys; their pickles hold their zones
        offset = key.replace(fold=0).utcoffset()  # (as Python's own hash: fold does not count)
        if offset is not None:
            day = key.toordinal() if isinstance(key, datetime.datetime) else 0
            micro = ((day * 86400 + key.hour * 3600 + key.minute * 60 + key.second) * 10**6
                     + key.microsecond - offset // datetime.timedelta(microseconds=1))
            return _combine((type(key).__name__, micro))  # (no datetime arithmetic: no overflow)
    return _pickle_hash(key)


class _SeedFreePickler(pickle.Pickler):
    """Pickles a key with every set, frozenset and dict inside it replaced
    by an order-free digest of its items. A set's pickle lists its items in
    iteration order, which follows the process's hash seed: processes
    started apart (a cluster) would send one key to two kernels. Dicts
    (objects' attribute dicts too) are equal whatever their order."""

    def persistent_id(self, obj):
        if isinstance(obj, (set, frozenset)):
            return ("set", sum(stable_hash(item) for item in obj) & 0xFFFFFFFFFFFFFFFF)
        if isinstance(obj, dict):
            return ("dict", sum(stable_hash(item) for item in obj.items()) & 0xFFFFFFFFFFFFFFFF)
        return None


def _pickle_hash(key) -> int:
    """Any other key: its pickle (protocol 4), made independent of the hash seed."""
    buffer = io.BytesIO()
    _SeedFreePickler(buffer, protocol=4).dump(key)
    return zlib.crc32(buffer.getbuffer())


_GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / the golden ratio, odd


def key_group(key, groups: int) -> int:
    """The key group of `key` among `groups` (a power of two): the top bits
    of `stable_hash(key)` times 2**64 / golden ratio, modulo 2**64
    (Fibonacci hashing: they depend on every bit of the hash, so keys with a
    stride spread; `kernel.dataflow._key_groups`)."""
    return ((stable_hash(key) * _GOLDEN) & _MASK) >> (64 - (groups.bit_length() - 1))


class Partitioner:
    """Splits batches of `(key, value)` pairs by the kernel that owns each key.

    `owners[g]` is the kernel that owns key group `g` (`key_group(key,
    len(owners))`, `len(owners)` a power of two: `kernel.dataflow._key_groups`,
    which lets a resumed run move whole groups between kernels); without it
    each kernel is one group, `stable_hash(key) % peers`."""

    __slots__ = ("_by_residue", "_cache", "_groups", "_owners", "_shift", "peers")

    def __init__(self, peers: int, owners: list[int] | None = None) -> None:
        self.peers = peers
        self._owners = list(range(peers)) if owners is None else list(owners)
        self._groups = groups = len(self._owners)
        self._by_residue = owners is None  # `stable_hash(key) % peers`
        if owners is not None and (groups & (groups - 1) or groups < 2):
            raise ValueError(f"key groups must be a power of two of at least 2, got {groups}")
        self._cache: dict = {}
        # key_group's shift for these groups (by residue: unused)
        self._shift = 64 - (groups.bit_length() - 1)

    def _group(self, key) -> int:
        """`key_group(key, groups)`, or `stable_hash(key) % peers` without
        owners; ~150 ns more than the residue alone, for each key new to
        the cache (a 128-bit product)."""
        if self._by_residue:
            return stable_hash(key) % self._groups
        return key_group(key, self._groups)

    def owner(self, key) -> int:
        owner = self._cache.get(key)
        return self._place(key) if owner is None else owner

    def _place(self, key) -> int:
        """The owner of a key new to the cache, cached. `key_group` and
        `stable_hash` written out for the usual keys (a str, an int), one
        call instead of four: a split's new str key 1.2 -> 0.87-0.94 us on
        the shared 2-CPU test machine, a new int 1.0 -> 0.63-0.65, a pair
        of ints 1.5 -> 1.3 (min of 21 timeit runs of 10,000 keys); the
        values are key_group's (tests/net/test_exchange.py). Every key of
        word count's end-of-run exchange is new, as is every new auction
        or person of NEXMark."""
        cls = key.__class__
        if cls is str:
            h = _crc32(key.encode("utf-8", "surrogatepass"))
        elif cls is int:
            h = key & _MASK
        else:
            h = stable_hash(key)
        owner = self._owners[h % self._groups if self._by_residue else ((h * _GOLDEN) & _MASK) >> self._shift]
        cache = self._cache
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = owner
        return owner

    def owned_by(self, kernel: int):
        """`owns(key)`: whether `kernel` owns `key`. Uncached: for cutting a
        snapshot, where each key comes once (the cache would only cost)."""
        owners, group = self._owners, self._group

        def owns(key) -> bool:
            return owners[group(key)] == kernel

        return owns

    def split(self, pairs: list) -> list[list]:
        """One list per kernel; pairs keep their relative order (and their
        timestamps, for a TimedBatch)."""
        if pairs.__class__ is TimedBatch:
            return self._split_timed(pairs)
        parts: list[list] = [[] for _ in range(self.peers)]
        appends = [part.append for part in parts]
        get = self._cache.get
        place = self._place
        for pair in pairs:
            kernel = get(pair[0])
            if kernel is None:
                kernel = place(pair[0])
            appends[kernel](pair)
        return parts

    def failing_pair(self, pairs: list) -> tuple[bool, object]:
        """(found, pair): the first pair whose key `split` cannot place (an
        unhashable key, one without a stable hash). For error messages: it
        places the pairs again, one by one."""
        for pair in pairs:
            try:
                self.owner(pair[0])
            except KeyboardInterrupt:
                raise
            except BaseException:  # a key's own __hash__ or __reduce__ may raise anything
                return True, pair
        return False, None

    def _split_timed(self, pairs: TimedBatch) -> list[TimedBatch]:
        parts = [TimedBatch() for _ in range(self.peers)]
        appends = [part.append for part in parts]
        stamp_appends = [part.timestamps.append for part in parts]
        get = self._cache.get
        place = self._place
        for pair, stamp in zip(pairs, pairs.timestamps):
            kernel = get(pair[0])
            if kernel is None:
                kernel = place(pair[0])
            appends[kernel](pair)
            stamp_appends[kernel](stamp)
        return parts
