"""Key groups: the unit keyed state and source partitions move in when a
resumed run has another number of kernels (Flink's key groups).

A run has a fixed number of key groups (a power of two), chosen at its
first run and kept in its snapshot store. A key's group is `group_of(
stable_hash(key) % groups)`: the residue with its bits reversed. Kernel `k`
of `n` owns the contiguous range of groups `range_of(k, n, groups)`, so the
owner of group `g` is `g * n // groups`. Growing from 2 kernels to 3 moves
a third of each kernel's groups, not every key, and a snapshot taken on
any number of kernels can be cut by group for any other number (up to
`groups` kernels).

Why reversed: `stable_hash` of an int is the int, and small int keys are
common (`key_by(lambda n: n % 7)`). Plain residues would put keys 0-63 all
in the first half of the groups: on kernel 0 of 2. Reversed, consecutive
residues spread evenly over the groups (a van der Corput sequence): on
`2**j` kernels keys `i` and `i + 2**j` share a kernel and any `2**j`
consecutive ones are on all of them, as round robin would put them; on
other counts, nearly so.

The bounded sources partition their input the same way: record `i` of a
`from_iterable` input is in partition `i % groups`, read by the kernel that
owns that group, so their positions move with the groups too.
"""

from __future__ import annotations

#: the fewest key groups a run has (Flink's default maximum parallelism)
MIN_KEY_GROUPS = 128
MAX_KEY_GROUPS = 1 << 15


def default_key_groups(kernels: int) -> int:
    """How many key groups a run on `kernels` kernels gets on its first run:
    at least 128, and room to grow by half again (Flink's rule): the
    smallest power of two >= 1.5 x kernels, between 128 and 32,768."""
    wanted = kernels + kernels // 2
    groups = 1 << max(wanted - 1, 1).bit_length()
    return min(max(groups, MIN_KEY_GROUPS), MAX_KEY_GROUPS)


def group_of(residue: int, groups: int) -> int:
    """The key group of a key whose `stable_hash(key) % groups` is `residue`
    (`groups` a power of two): its bits reversed."""
    bits = groups.bit_length() - 1
    return int(format(residue, f"0{bits}b")[::-1], 2) if bits else 0


def owner_table(kernels: int, groups: int) -> list[int]:
    """`table[stable_hash(key) % groups]`: the kernel that owns `key`."""
    return [group_of(residue, groups) * kernels // groups for residue in range(groups)]


def range_of(kernel: int, kernels: int, groups: int) -> range:
    """The key groups kernel `kernel` of `kernels` owns: a contiguous range
    (the groups `g` with `g * kernels // groups == kernel`)."""
    return range(-(-kernel * groups // kernels), -(-(kernel + 1) * groups // kernels))
