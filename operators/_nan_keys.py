"""Join keys that hold a NaN match nothing, on any number of kernels.

A NaN equals nothing, not itself, but a dict finds a key by identity before
it compares: one NaN object met on both sides of a join matched on one
kernel, and its copies (an exchange between kernels makes new objects) did
not on several, so a join's result depended on the kernel count. A key that
is a NaN (a float's, or another number's: `Decimal("NaN")`, a complex with a
NaN part), or a tuple or frozenset holding one (nested), now matches nothing
anywhere, as a NULL key in SQL. Looked for only where a key is new to a join
(a miss), not per record.
"""

from __future__ import annotations

import numbers
from itertools import chain

# Types whose keys hold no NaN: a closed window's keys are looked at by type
# first, in one pass in C (`may_hold_nan`), not one Python call a key.
_PLAIN = frozenset((str, int, bool, bytes))
_TUPLE = frozenset((tuple,))


def holds_nan(key) -> bool:
    """Whether `key` is a NaN, or a tuple or frozenset (nested) holding one."""
    if isinstance(key, (str, int, bytes)):  # the usual keys, first: no NaN
        return False
    if isinstance(key, float):
        return key != key
    if isinstance(key, (tuple, frozenset)):
        return any(map(holds_nan, key))
    # (as the exchange's hash tells a NaN: Decimal's, complex's, another library's numbers)
    return isinstance(key, numbers.Number) and key != key


def may_hold_nan(keys) -> bool:
    """False where each of `keys` (a collection: iterated up to three
    times) is a str, an int or bytes, or each a tuple of such (a composite
    key): none holds a NaN. Else True: `holds_nan` tells which."""
    if _PLAIN.issuperset(map(type, keys)):
        return False
    tuples = _TUPLE.issuperset(map(type, keys))
    return not (tuples and _PLAIN.issuperset(map(type, chain.from_iterable(keys))))
