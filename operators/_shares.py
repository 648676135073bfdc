"""Which records of a bounded input each kernel reads, by partition.

Record `i` of a `from_iterable` / `from_async_iterable` input is in
partition `i % groups` (as many partitions as the run has key groups:
`kernel.dataflow._key_groups`), and kernel `k` of `n` reads the partitions
`k, k + n, k + 2n, ...`, in record order. When `n` divides the number of
partitions (any power of two up to 128) that is record `i` to kernel
`i % n`, a plain slice `data[k::n]`; otherwise one slice per block of
`groups` records.

A snapshot keeps, per partition, how many of its records were consumed
(`{partition: count}`): record `i` was consumed when `i // groups <
count[i % groups]`. That is what lets a run resumed on another number of
kernels hand partitions, with their positions, to other kernels: each new
kernel takes the counts of its own partitions from every old kernel's
snapshot (`merge_consumed`), and reads what is left of them.
"""

from __future__ import annotations

from itertools import islice

#: a partition read to its end (its kernel's source had ended)
ALL = 1 << 62


def consumed_before(position: int, group: int, groups: int) -> int:
    """How many records of partition `group` come before record `position`."""
    return (position - group + groups - 1) // groups if position > group else 0


def merge_consumed(snapshots: list, ended, groups: int) -> dict:
    """`{partition: consumed}` from every old kernel's snapshot (a source's:
    `{"consumed": {...}}`); a kernel whose source had ended (`ended`) had
    read all of its partitions."""
    old = len(snapshots)
    merged: dict = {}
    for kernel, snapshot in enumerate(snapshots):
        if snapshot == ended:
            merged.update(dict.fromkeys(range(kernel, groups, old), ALL))
        elif snapshot is not None:
            merged.update(snapshot["consumed"])
    return merged


class Share:
    """One kernel's share of a bounded input, and how far it has read it.

    `next` is the index of the next record to consider: every record of
    this kernel's partitions before it was handed on (or consumed by the
    run this one resumes)."""

    __slots__ = ("consumed", "first", "groups", "next", "pulled", "ragged_until", "stride")

    def __init__(self, index: int, peers: int, groups: int) -> None:
        self.groups, self.first, self.stride = groups, index, peers
        self.consumed: dict[int, int] = {}  # partition -> records consumed before this run
        self.ragged_until = 0  # blocks below it have partitions consumed further than others
        self.next = index
        self.pulled = 0  # (iterators) records read from the input so far

    def partitions(self) -> range:
        return range(self.first, self.groups, self.stride)

    # -- positions ----------------------------------------------------------------

    def snapshot(self) -> dict:
        groups, position, consumed = self.groups, self.next, self.consumed
        return {"consumed": {g: max(consumed.get(g, 0), consumed_before(position, g, groups))
                             for g in self.partitions()}}

    def restore(self, snapshot: dict) -> None:
        counts = snapshot["consumed"]
        self.consumed = {g: counts.get(g, 0) for g in self.partitions()}
        values = self.consumed.values()
        low, high = (min(values), max(values)) if self.consumed else (0, 0)
        # Blocks from `low` to `high` hold records of some partitions only:
        # those are read record by record (and every block, when some
        # partitions were read to their end: a rescaled run's rare case).
        self.ragged_until = high if high < ALL else (ALL if low < ALL else 0)
        self.next = low * self.groups + self.first if low < ALL else ALL

    # -- reading --------------------------------------------------------------------

    def take(self, data, size: int) -> list:
        """Up to `size` (a block's worth more in a ragged stretch) of the
        next records of this share of the sequence `data`."""
        out: list = []
        i, n, groups, stride, first = self.next, len(data), self.groups, self.stride, self.first
        even = groups % stride == 0  # the share is every `stride`-th record from `first`
        while len(out) < size and i < n:
            block_end = (i // groups + 1) * groups
            if i < self.ragged_until * groups:
                out += self._unconsumed(range(i, min(block_end, n), stride), data.__getitem__)
                i = block_end + first
                continue
            end = min(n, i + (size - len(out)) * stride)
            if not even:
                end = min(end, block_end)
            taken = data[i:end:stride]
            out += taken
            i += len(taken) * stride
            if not even and i >= block_end:
                i = block_end + first
        self.next = i
        return out

    def take_from(self, it, size: int) -> tuple[list, bool]:
        """The same from an iterator that yields the whole input (each
        kernel reads it all and keeps its share): (records, exhausted)."""
        out: list = []
        i, groups, stride, first = self.next, self.groups, self.stride, self.first
        while len(out) < size:
            block_end = (i // groups + 1) * groups
            if self.pulled < i:  # read past the records of other kernels' partitions
                ahead = i - self.pulled
                if next(islice(it, ahead - 1, ahead), _GONE) is _GONE:
                    self.next = i
                    return out, True
                self.pulled = i
            ragged = i < self.ragged_until * groups
            count = block_end - i if ragged else min(block_end - i, (size - len(out) - 1) * stride + 1)
            chunk = list(islice(it, count))
            self.pulled += len(chunk)
            if ragged:
                out += self._unconsumed(range(i, i + len(chunk), stride), lambda j, c=chunk, i=i: c[j - i])
            else:
                out += chunk[::stride]
            i += -(-len(chunk) // stride) * stride
            if i >= block_end:
                i = block_end + first
            if len(chunk) < count:
                self.next = i
                return out, True
        self.next = i
        return out, False

    def _unconsumed(self, indices: range, record) -> list:
        """The records at `indices` (in one block) that the run this one
        resumes had not consumed."""
        consumed, groups = self.consumed, self.groups
        block = indices.start // groups
        base = block * groups
        return [record(j) for j in indices if consumed[j - base] <= block]

    def takes_everything(self) -> bool:
        """One kernel reading its input from the start: every record is its own."""
        return self.stride == 1 and not any(self.consumed.values())

    def keeps(self, position: int) -> bool:
        """Whether record `position` of the input is this kernel's to read
        (record by record: the async source)."""
        block, group = divmod(position, self.groups)
        return group % self.stride == self.first and block >= self.consumed.get(group, 0)


_GONE = object()
