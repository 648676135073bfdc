"""Key groups: the unit keyed state and source partitions move in when a
resumed run has another number of kernels (Flink's key groups).

A run has a fixed number of key groups (a power of two), chosen at its
first run and kept in its snapshot store. A key's group is the top bits of
`stable_hash(key)` times 2**64 / golden ratio (Fibonacci hashing,
`net._exchange.key_group`). Kernel `k` of `n` owns the contiguous range of
groups `range_of(k, n, groups)`, so the owner of group `g` is `g * n //
groups`. Growing from 2 kernels to 3 moves a third of each kernel's
groups, not every key, and a snapshot taken on any number of kernels can
be cut by group for any other number (up to `groups` kernels).

Why Fibonacci hashing: `stable_hash` of an int is the int. Its plain
residue (an earlier layout reversed its bits) decides the owner by the
key's low bits, so keys with a stride share a kernel: NEXMark's hot
auctions, ids that are multiples of 100, all went to kernel 0 of 2 and
made it do three quarters of a join (`benches/RESULTS.md`). The top bits
of the product depend on every bit of the key, and consecutive keys spread
as evenly as round robin would, nearly (the multiples of the golden
ratio's fraction are a low-discrepancy sequence): keys 0-6 fall 4/3 on 2
kernels, 3/2/2 on 3.

The bounded sources partition their input by position, not by key: as
many partitions as key groups, partition `p` read by kernel `p % n`
(`operators/_shares.py`); their positions move by partition.
"""

from __future__ import annotations

#: the fewest key groups a run has (Flink's default maximum parallelism)
MIN_KEY_GROUPS = 128
MAX_KEY_GROUPS = 1 << 15


def default_key_groups(kernels: int) -> int:
    """How many key groups a run on `kernels` kernels gets on its first run:
    at least 128, and room to grow by half again (Flink's rule): the
    smallest power of two >= 1.5 x kernels, between 128 and 32,768."""
    wanted = (3 * kernels + 1) // 2  # (1.5 x kernels, rounded up: 171 kernels want 257, so 512)
    groups = 1 << max(wanted - 1, 1).bit_length()
    return min(max(groups, MIN_KEY_GROUPS), MAX_KEY_GROUPS)


def owner_table(kernels: int, groups: int) -> list[int]:
    """`table[key_group(key, groups)]`: the kernel that owns `key`."""
    return [group * kernels // groups for group in range(groups)]


def range_of(kernel: int, kernels: int, groups: int) -> range:
    """The key groups kernel `kernel` of `kernels` owns: a contiguous range
    (the groups `g` with `g * kernels // groups == kernel`)."""
    return range(-(-kernel * groups // kernels), -(-(kernel + 1) * groups // kernels))
