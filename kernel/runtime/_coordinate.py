"""Completing epochs: a kernel's snapshot is durable, then every kernel's is.

The runtime hands each of its whole snapshots to a coordinator
(`durable(epoch, blob)`), and when all its work has ended, its last one
(`finished(blob)`). An epoch is complete once every kernel has made it
durable (a kernel that has finished counts for every later epoch: it takes
part in none). Only then is it marked complete in the store, and only then
do operators publish the output held back for it (`Runtime.commit`): the
exactly-once file sink renames its hidden files then.

* `LocalCoordinator`: one kernel in this process.
* `KernelSide` / `LauncherSide`: kernels in processes. Each kernel writes
  its own snapshots to the store (its own SQLite connection) and tells the
  launcher over its result pipe; the launcher marks epochs complete and
  sends `commit` back over a second pipe. A kernel that has finished waits
  for the final commit before its process exits.

Writes go to the store on a writer thread of the coordinator's own (in
order), so the kernel's loop never waits for an fsync: only the pickling of
the snapshot happens on the kernel, when operators align. A failed write
fails the run.

A flow that already ran to the end, run again, restores its final epoch:
every operator has ended, so nothing runs, but the commit of that epoch
still happens. It publishes what a crash during the final commit left
hidden (the epoch was marked complete before the renames), and nothing new
is written to the store.

The store is duck-typed (`write`, `mark_complete`, `FINAL`): the kernel's core
never imports `state`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from kernel._faults import crash_point
from kernel.scheduling._from_threads import call_soon_from_thread


class _Coordinator:
    def __init__(self, interval: float, snapshot: bytes | None, restored_epoch: int,
                 finished_before: bool = False) -> None:
        self.interval = interval
        self.snapshot = snapshot  # this kernel's part of the epoch a resumed run starts from
        self.restored_epoch = restored_epoch  # 0: a fresh start
        self.finished_before = finished_before  # the restored epoch is the end of a finished run
        self.first_epoch = restored_epoch + 1
        self.runtime = None
        self._closed = False

    @property
    def key_groups(self) -> int:
        """The run's key groups: fixed when its store was first claimed."""
        return self.store.key_groups

    def restored(self, runtime) -> None:
        """The runtime has put the snapshot back: what was complete stays
        published (and what a crash left hidden is published now), what was
        not is dropped (`commit` of the restored epoch)."""
        runtime.commit(self.restored_epoch)
        if self.finished_before:
            self._close()  # every operator had ended: nothing more to coordinate

    def finished(self, blob: bytes) -> None:
        """This kernel's work has all ended: its last snapshot. A finished
        run's rerun ends as soon as it is restored, with nothing to add."""
        if not self.finished_before:
            self._finish(blob)

    def attach(self, runtime) -> None:
        self.runtime = runtime
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-writer")

    def _in_background(self, work, then) -> None:
        """`work()` on the writer thread, then `then()` on the kernel's loop."""
        loop = self.runtime.kernel.loop
        kernel = self.runtime.kernel

        def done(future):
            if self._closed:  # the run is over (failed): nothing more to tell it
                return
            exc = future.exception()
            if exc is not None:
                call_soon_from_thread(loop, kernel.fail, exc)
            else:
                call_soon_from_thread(loop, self._guarded, then)

        self._writer.submit(work).add_done_callback(done)

    def _guarded(self, fn, *args) -> None:
        """Run `fn` from a loop callback: a failure (an operator's on_commit)
        fails the run instead of going to the loop's exception handler."""
        if self._closed:
            return
        try:
            fn(*args)
        except BaseException as exc:
            self.runtime.kernel.fail(exc)

    def _close(self) -> None:
        self._writer.shutdown(wait=False)

    def close(self) -> None:
        """The run is over, however it ended: wait for the snapshot writes in
        flight (so nothing is written after the run returns) and drop what
        they would have told the runtime (its loop may be closing)."""
        self._closed = True
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.shutdown(wait=True)


class LocalCoordinator(_Coordinator):
    def __init__(self, store, interval: float, snapshot: bytes | None, restored_epoch: int,
                 finished_before: bool = False) -> None:
        super().__init__(interval, snapshot, restored_epoch, finished_before)
        self.store = store

    def durable(self, epoch: int, blob: bytes) -> None:
        def work():
            self.store.write(epoch, 0, blob)
            crash_point("snapshot")
            self.store.mark_complete(epoch)

        self._in_background(work, lambda: self.runtime.commit(epoch))

    def _finish(self, blob: bytes) -> None:
        final = self.runtime.epochs.next_epoch
        kernel = self.runtime.kernel
        kernel.hold()  # the run ends when the last snapshot is written and committed

        def work():
            self.store.write(self.store.FINAL, 0, blob)
            self.store.mark_complete(final, final=True)

        def then():
            self.runtime.commit(final)
            self._close()
            kernel.release()

        self._in_background(work, then)


class KernelSide(_Coordinator):
    """In a kernel process: `report` sends to the launcher; `commits` is
    the pipe the launcher answers on."""

    def __init__(self, store, index: int, report, commits, interval: float,
                 snapshot: bytes | None, restored_epoch: int, finished_before: bool = False) -> None:
        super().__init__(interval, snapshot, restored_epoch, finished_before)
        self.store = store
        self.index = index
        self.report = report
        self.commits = commits
        self._waiting_final = False

    def attach(self, runtime) -> None:
        super().attach(runtime)
        runtime.kernel.loop.add_reader(self.commits.fileno(), self._guarded, self._on_commit)

    def durable(self, epoch: int, blob: bytes) -> None:
        def work():
            self.store.write(epoch, self.index, blob)
            crash_point("snapshot", self.index)

        self._in_background(work, lambda: self.report(("durable", epoch)))

    def _finish(self, blob: bytes) -> None:
        self._waiting_final = True
        self.runtime.kernel.hold()  # until the launcher's final commit
        next_epoch = self.runtime.epochs.next_epoch
        self._in_background(lambda: self.store.write(self.store.FINAL, self.index, blob),
                            lambda: self.report(("finished", next_epoch)))

    def _close(self) -> None:
        self.runtime.kernel.loop.remove_reader(self.commits.fileno())
        super()._close()

    def _on_commit(self) -> None:
        while self.commits.poll():
            epoch, final = self.commits.recv()
            self.runtime.commit(epoch)
            if not final:
                crash_point("committed", self.index)
            if final and self._waiting_final:
                self._waiting_final = False
                self._close()
                self.runtime.kernel.release()


class EpochGather:
    """Epochs complete once every member (a kernel, or a cluster's process)
    has made them durable; a member that has finished counts for every
    later epoch. `complete(epoch, final)` is called for each complete epoch
    in order, and once (final=True) when every member has finished."""

    def __init__(self, members: int, restored_epoch: int, complete) -> None:
        self.members = members
        self.last_complete = restored_epoch
        self.complete = complete
        self._durable: dict[int, set[int]] = {}
        self._finished: dict[int, int] = {}  # member -> its next epoch number

    def message(self, member: int, message: tuple) -> None:
        kind, epoch = message
        if kind == "durable":
            self._durable.setdefault(epoch, set()).add(member)
        else:
            self._finished[member] = epoch
        self._advance()

    def _advance(self) -> None:
        everyone = set(range(self.members))
        while True:
            epoch = self.last_complete + 1
            done = self._durable.get(epoch, set()) | set(self._finished)
            if done != everyone or len(self._finished) == self.members:
                break
            self._durable.pop(epoch, None)
            self.last_complete = epoch
            self.complete(epoch, False)
        if len(self._finished) == self.members:
            final = max([self.last_complete + 1, *self._finished.values()])
            self.last_complete = final
            self.complete(final, True)


class LauncherSide:
    """In the launcher: epochs complete once every kernel made them durable."""

    def __init__(self, store, kernels: int, restored_epoch: int, send_commit) -> None:
        self.store = store
        self.send_commit = send_commit  # (epoch, final) -> every kernel
        self._gather = EpochGather(kernels, restored_epoch, self._complete)

    @property
    def last_complete(self) -> int:
        return self._gather.last_complete

    def message(self, kernel: int, message: tuple) -> None:
        self._gather.message(kernel, message)

    def _complete(self, epoch: int, final: bool) -> None:
        self.store.mark_complete(epoch, final=final)
        self.send_commit(epoch, final)
