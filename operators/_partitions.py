"""A source whose kernels each make their own share: `Dataflow.from_partitions`.

`from_iterable` gives every kernel the same input, and each keeps every N-th
record: every kernel walks the whole input (and, after `fork`, touches every
page of it). Here the user's `make(index, peers)` builds only the share of
kernel `index` of `peers`, inside that kernel: a generator, a range, one file
of a directory, one partition of a table. The share is read lazily, one
batch per poll, so a generator's records are made as they are read, and an
endless share runs in bounded memory.

`index` is the kernel's number across the whole run (in a cluster, process
`p` of `C` cores runs kernels `p*C .. p*C+C-1`) and `peers` the number of
kernels, so shares that split on `index` and `peers` are disjoint and
complete however many kernels run.

Recovery: the position is an offset into the share. A resumed run calls
`make` again, on the same kernel index, and reads past what the snapshot had
handed on, so `make` must return the same share each time (a replayable
input, as for `from_async_iterable`). It resumes on as many kernels as
wrote the snapshot only: an offset into a share of 2 kernels says nothing
about the shares of 3 (a clear error says so).
"""

from __future__ import annotations

from itertools import islice

from kernel.dataflow._arity import check_arity
from kernel.dataflow._errors import PASSES_THROUGH, KernelError, OperatorError
from kernel.dataflow._operator import DEFAULT_BATCH_SIZE, Source

from ._sources import check_batch_size, in_a_fixed_order

# Shares that slice: a batch is one slice, several times faster than islice.
_SEQUENCES = (list, tuple, range)


def check_make(make) -> None:
    if not callable(make):
        raise TypeError(
            f"from_partitions needs a function make(index, peers) returning this kernel's share, "
            f"got {make!r}"
        )
    check_arity(make, 2, "from_partitions", "(index, peers)")


class PartitionSource(Source):
    """Reads `make(index, peers)`, this kernel's share, in batches of at most
    `batch_size` records (fewer when the kernel wants fewer). The share is
    made at the first poll (a resumed run whose share had ended never makes
    it)."""

    def __init__(self, make, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        check_make(make)
        self.make = make
        self.batch_size = check_batch_size(batch_size)

    def open(self, context):
        self._made = False  # make() is called at the first poll
        self._share = None  # what it returned
        self._sequence = None  # the share, when it slices
        self._iterator = None  # else an iterator over it
        self._position = 0  # records of the share handed on

    # Resuming: the offset into the share; the first poll reads past it.
    def on_epoch(self, epoch):
        return {"position": self._position}

    def restore(self, snapshot):
        self._position = snapshot["position"]

    def rescale(self, snapshots, owns):
        # An offset counts records of make(index, peers) for the old peers:
        # the shares of another kernel count are other records altogether.
        old, new = len(snapshots), self.context.peers
        raise KernelError(
            f"{self.name}: the run that wrote the state_dir read make(index, peers) on {old} kernels, "
            f"and how far it had read each share says nothing about the shares of {new}: resume it on "
            f"{old} kernels (--cores {old}, or as many processes and cores as before)"
        )

    def _make_share(self) -> None:
        index, peers = self.context.index, self.context.peers
        make = self.make
        try:
            share = make(index, peers)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise OperatorError.wrap(self.name, make, exc, has_record=False) from exc
        if isinstance(share, (set, frozenset)) and self.context.snapshots:
            # a resumed run reads past the records handed on, by count, in
            # another process, where a set of str iterates in another order
            share = in_a_fixed_order(self.name, share, f"the share make({index}, {peers}) returned")
        self._made = True
        self._share = share
        if isinstance(share, _SEQUENCES):
            self._sequence = share
        else:
            if hasattr(share, "__aiter__"):
                problem = TypeError(
                    f"make({index}, {peers}) returned an async iterable {share!r}: "
                    "from_partitions reads iterables (use from_async_iterable for async ones)"
                )
                raise OperatorError.wrap(self.name, make, problem, has_record=False)
            try:
                self._iterator = iter(share)
            except TypeError as exc:
                problem = TypeError(f"make({index}, {peers}) returned {share!r}, which is not iterable")
                raise OperatorError.wrap(self.name, make, problem, has_record=False) from exc
            if self._position:
                self._skip(self._position)

    def _skip(self, count: int) -> None:
        """Read past the `count` records a resumed run had handed on."""
        try:
            next(islice(self._iterator, count - 1, count), None)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise OperatorError.wrap(self.name, self._share_name(), exc, has_record=False) from exc

    def _share_name(self):
        # a generator names itself after its function; any other iterable is
        # named by the make() that returned it
        if getattr(self._share, "__qualname__", None):
            return self._share
        return f"the share that {getattr(self.make, '__qualname__', repr(self.make))} returned"

    def poll(self):
        if not self._made:
            self._make_share()
        size = min(self.batch_size, self.records_wanted)
        start = self._position
        if self._sequence is not None:
            batch = self._sequence[start : start + size]
            if batch.__class__ is not list:
                batch = list(batch)
        else:
            try:
                batch = list(islice(self._iterator, size))
            except PASSES_THROUGH:
                raise
            except BaseException as exc:
                raise OperatorError.wrap(self.name, self._share_name(), exc, has_record=False) from exc
        self._position = start + len(batch)
        if batch:
            self.emit(batch)
        return len(batch) == size
