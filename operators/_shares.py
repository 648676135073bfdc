"""Which records of a bounded input each kernel reads, by partition.

A bounded input is cut into *runs* of `run` consecutive records, and run
`u` is in partition `u % groups` (as many partitions as the run has key
groups: `kernel.dataflow._key_groups`); kernel `k` of `n` reads the
partitions `k, k + n, k + 2n, ...`, in record order. With `run == 1`
(small inputs, one kernel, iterators) that is record `i` to kernel `i % n`
when `n` divides the number of partitions (any power of two up to 128), a
plain slice `data[k::n]`; otherwise one slice per block of `groups` runs.

Why runs: kernels inherit a list by `fork`, and reading a record writes its
reference count, so every page a kernel reads from is copied (a minor
fault, 4-5 us here). Record by record, every kernel reads from every page
of the input; by runs of a few hundred records each page is read by one
kernel (`sequence_run`; benches/pipelines.py windowed sum, 2 kernels:
8,066 -> 4,656 faults and ~45 -> ~30 ms a kernel for its 100,000 events).

A snapshot keeps, per partition, how many of its records were consumed
(`{partition: count}`) and the run length: record `i` was consumed when its
place in its partition, `(i // run // groups) * run + i % run`, is below
`count[(i // run) % groups]`. That is what lets a run resumed on another
number of kernels hand partitions, with their positions, to other kernels:
each new kernel takes the counts of its own partitions from every old
kernel's snapshot (`merge_consumed`), and reads what is left of them.
"""

from __future__ import annotations

from itertools import islice

#: a partition read to its end (its kernel's source had ended)
ALL = 1 << 62

# Runs of at least this many records, or none (`run == 1`): shorter runs
# would cost a slice each for a few records, and a small input (a test's)
# keeps being dealt out record by record.
_SHORTEST_RUN = 64
_LONGEST_RUN = 1024  # bounds how far one kernel's share runs ahead of another's in record order


def sequence_run(length: int, peers: int, groups: int) -> int:
    """The run length for a sequence of `length` records read by `peers`
    kernels: about a quarter of a partition's share, between _SHORTEST_RUN
    and _LONGEST_RUN records, or 1 (record by record) where that would be
    shorter and on one kernel (where nothing is shared)."""
    run = min(_LONGEST_RUN, length // (4 * groups))
    return run if peers > 1 and run >= _SHORTEST_RUN else 1


def consumed_before(position: int, group: int, groups: int, run: int = 1) -> int:
    """How many records of partition `group` come before record `position`."""
    unit, offset = divmod(position, run)
    block, place = divmod(unit, groups)
    return block * run + (run if place > group else offset if place == group else 0)


def merge_consumed(snapshots: list, ended, groups: int) -> dict:
    """A snapshot for the new kernels, `{"consumed": {partition: count},
    "run": run}`, from every old kernel's snapshot (a source's); a kernel
    whose source had ended (`ended`) had read all of its partitions, unless
    a snapshot counts them: a stream (the standard input) is read whole by
    kernel 0, whose share is every partition, and the other kernels' sources
    end at once, having read none (their partitions counted as read, a
    rescaled resume lost them). A partition counted by several snapshots
    (kernel 0's and, before its source ended, another's 0) takes the most."""
    old = len(snapshots)
    merged: dict = {}
    read_to_the_end: dict = {}
    run = 1
    for kernel, snapshot in enumerate(snapshots):
        if snapshot == ended:
            read_to_the_end.update(dict.fromkeys(range(kernel, groups, old), ALL))
        elif snapshot is not None:
            for partition, count in snapshot["consumed"].items():
                merged[partition] = max(merged.get(partition, 0), count)
            run = snapshot.get("run", 1)
    for partition, count in read_to_the_end.items():
        merged.setdefault(partition, count)
    return {"consumed": merged, "run": run}


class Share:
    """One kernel's share of a bounded input, and how far it has read it.

    `next` is the index of the next record to consider: every record of
    this kernel's partitions before it was handed on (or consumed by the
    run this one resumes)."""

    __slots__ = ("consumed", "first", "groups", "next", "pulled", "ragged_until", "run", "stride")

    def __init__(self, index: int, peers: int, groups: int, run: int = 1) -> None:
        self.groups, self.first, self.stride, self.run = groups, index, peers, run
        self.consumed: dict[int, int] = {}  # partition -> records consumed before this run
        self.ragged_until = 0  # blocks below it have partitions consumed further than others
        self.next = index * run
        self.pulled = 0  # (iterators) records read from the input so far

    def partitions(self) -> range:
        return range(self.first, self.groups, self.stride)

    # -- positions ----------------------------------------------------------------

    def snapshot(self) -> dict:
        groups, position, consumed, run = self.groups, self.next, self.consumed, self.run
        counts = {g: max(consumed.get(g, 0), consumed_before(position, g, groups, run))
                  for g in self.partitions()}
        return {"consumed": counts, "run": run} if run != 1 else {"consumed": counts}

    def restore(self, snapshot: dict) -> None:
        """Go on from `snapshot`, whose run length this share takes (the
        same input gives the same; a resumed run must read by the runs its
        positions count)."""
        counts, run = snapshot["consumed"], snapshot.get("run", 1)
        self.run = run
        self.consumed = {g: counts.get(g, 0) for g in self.partitions()}
        values = self.consumed.values()
        low, high = (min(values), max(values)) if self.consumed else (0, 0)
        # Blocks (of `groups` runs) from `low`'s to `high`'s hold records of
        # some partitions only: those are cut run by run (and every block,
        # when some partitions were read to their end: a rescaled run's rare
        # case).
        self.ragged_until = -(-high // run) if high < ALL else (ALL if low < ALL else 0)
        self.next = (low // run * self.groups + self.first) * run if low < ALL else ALL

    # -- reading --------------------------------------------------------------------

    def take(self, data, size: int, length: int | None = None) -> list:
        """Up to `size` of the next records of this share of the sequence
        `data` of `length` records (`len(data)` when not given: a range may
        be longer than len() can say) (record by record in a ragged
        stretch)."""
        if length is None:
            length = len(data)
        if self.run != 1:
            return self._take_runs(data, size, length)
        out: list = []
        i, n, groups, stride, first = self.next, length, self.groups, self.stride, self.first
        even = groups % stride == 0  # the share is every `stride`-th record from `first`
        while len(out) < size and i < n:
            block_end = (i // groups + 1) * groups
            if i < self.ragged_until * groups:
                # Up to `size` here too: a resumed run's first batch took the
                # rest of the block (up to `groups` records) whatever the
                # batch_size, so its watermark came only after all of them,
                # and windows saw fewer events late than the run it resumes
                # (batch_size=1: a join's pairs and late counts differed).
                consumed, block = self.consumed, i // groups
                base = block * groups
                end = min(block_end, n)
                while i < end and len(out) < size:
                    if consumed[i - base] <= block:
                        out.append(data[i])
                    i += stride
                if i >= end:
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

    def _take_runs(self, data, size: int, length: int) -> list:
        """`take` by runs: a slice of each run of this share's partitions,
        past what the resumed run had consumed of it."""
        out: list = []
        i, n, run = self.next, length, self.run
        ragged_end = self.ragged_until * self.groups * run
        while len(out) < size and i < n:
            unit = i // run
            i = self._past_consumed(i, unit, ragged_end)
            run_end = (unit + 1) * run
            if i < run_end:
                end = min(n, run_end, i + size - len(out))
                out += data[i:end]
                i = end
            if i >= run_end:
                i = self._next_run(unit)
        self.next = i
        return out

    def _past_consumed(self, i: int, unit: int, ragged_end: int) -> int:
        """Position `i` in run `unit`, moved past what the resumed run had
        consumed of that run (in a ragged stretch)."""
        if i >= ragged_end:
            return i
        block, place = divmod(unit, self.groups)
        return max(i, unit * self.run + self.consumed.get(place, 0) - block * self.run)

    def _next_run(self, unit: int) -> int:
        """The first position of this kernel's run after run `unit`."""
        block, place = divmod(unit, self.groups)
        if place + self.stride < self.groups:
            return (unit + self.stride) * self.run
        return ((block + 1) * self.groups + self.first) * self.run

    def take_from(self, it, size: int) -> tuple[list, bool]:
        """The same from an iterator that yields the whole input (each
        kernel reads it all and keeps its share): (records, exhausted)."""
        if self.run != 1:
            return self._take_runs_from(it, size)
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
            # At most the records of `size` more of this share's positions, ragged
            # or not: `_unconsumed` keeps some of them, never more, so a batch
            # stays within `size` (see `take`). (Read one record at a time in
            # a ragged stretch, this was ~10x slower there, and a run rescaled
            # past an ended kernel is ragged from its start to its end.)
            count = min(block_end - i, (size - len(out) - 1) * stride + 1)
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

    def _take_runs_from(self, it, size: int) -> tuple[list, bool]:
        """`take_from` by runs: a share whose snapshot counts runs (a
        sequence's, `sequence_run`) resumed on an iterator of the same
        records, read as `_take_runs` reads the sequence (record by record,
        its positions would be other records: some lost, some twice)."""
        out: list = []
        i, run = self.next, self.run
        ragged_end = self.ragged_until * self.groups * run
        while len(out) < size:
            unit = i // run
            i = self._past_consumed(i, unit, ragged_end)
            run_end = (unit + 1) * run
            if i < run_end:
                if self.pulled < i:  # past the records of other kernels' runs
                    ahead = i - self.pulled
                    if next(islice(it, ahead - 1, ahead), _GONE) is _GONE:
                        self.next = i
                        return out, True
                    self.pulled = i
                count = min(run_end, i + size - len(out)) - i
                chunk = list(islice(it, count))
                self.pulled += len(chunk)
                out += chunk
                i += len(chunk)
                if len(chunk) < count:
                    self.next = i
                    return out, True
            if i >= run_end:
                i = self._next_run(unit)
        self.next = i
        return out, False

    def _unconsumed(self, indices: range, record) -> list:
        """The records at `indices` (in one block) that the run this one
        resumes had not consumed."""
        consumed, groups = self.consumed, self.groups
        block = indices.start // groups
        base = block * groups
        return [record(j) for j in indices if consumed[j - base] <= block]

    def unconsumed_at(self, records: list, start: int) -> list:
        """Those of `records`, at positions `start`, `start + 1`, ... of the
        input, that the run this one resumes had not consumed (a share of
        every partition: a stream kernel 0 reads whole, `LiveReader`); the
        caller moves `next` past them. Only
        the records before the end of the ragged stretch are looked at one
        by one; a share not resumed keeps every record as it is."""
        if start < self.next:  # (resumed: every record before `next` was consumed)
            records, start = records[self.next - start:], self.next
        run, groups = self.run, self.groups
        ragged_end = self.ragged_until * groups * run
        if start >= ragged_end or not records:
            return records
        consumed = self.consumed
        kept = []
        for offset, record in enumerate(records):
            position = start + offset
            if position >= ragged_end:
                kept += records[offset:]
                break
            block, group = divmod(position // run, groups)
            if block * run + position % run >= consumed.get(group, 0):
                kept.append(record)
        return kept

    def takes_everything(self) -> bool:
        """One kernel reading its input from the start: every record is its own."""
        return self.stride == 1 and not any(self.consumed.values())

    def keeps(self, position: int) -> bool:
        """Whether record `position` of the input is this kernel's to read
        (record by record: the async source)."""
        block, group = divmod(position, self.groups)
        return group % self.stride == self.first and block >= self.consumed.get(group, 0)


_GONE = object()
