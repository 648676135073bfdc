"""Join keys that hold a float NaN match nothing, on any number of kernels.

A NaN equals nothing, not itself, but a dict finds a key by identity before
it compares: one NaN object met on both sides of a join matched on one
kernel, and its copies (an exchange between kernels makes new objects) did
not on several, so a join's result depended on the kernel count. A key that
is a NaN, or a tuple holding one (nested), now matches nothing anywhere, as
a NULL key in SQL. Looked for only where a key is new to a join (a miss),
not per record.
"""

from __future__ import annotations


def holds_nan(key) -> bool:
    """Whether `key` is a float NaN or a tuple (nested) holding one."""
    if isinstance(key, float):
        return key != key
    if isinstance(key, tuple):
        return any(map(holds_nan, key))
    return False
