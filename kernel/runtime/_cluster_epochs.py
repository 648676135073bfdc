"""Completing epochs on a cluster: durable on every kernel of every process.

Each process's launcher gathers its own kernels' reports as on one machine
(`EpochGather`), but an epoch durable on all of them is only *durable on
this process*: it says so to process 0 (`("durable", epoch)`, or
`("finished", next_epoch)` once its kernels have all finished), over the
links (the relay's control channel). Process 0 gathers the processes'
reports the same way; an epoch durable on every process is complete: process
0 marks it complete in its own store first (that is the commit point of the
whole cluster), then tells every process (`("complete", epoch, final)`),
which marks it in its store and commits it to its kernels (their `to_files`
publish the epoch's files then). So a file is published on any machine only
once its epoch is durable everywhere.

A process lost between process 0's mark and its own leaves its store one
epoch or more behind process 0's; it still holds the snapshots of those
epochs (they were durable there before process 0 could complete them, and a
store only deletes epochs older than its own complete ones). A rerun
therefore resumes from process 0's newest complete epoch: see
`kernel._facade.ClusterSnapshots.decide`.

`send(process, message)` goes to another process's launcher through this
process's relay; `send_commit(epoch, final)` to this process's kernels.
Messages from the kernels wait until the relay has said which epoch the
run restored (`restored`): only then is the count known.
"""

from __future__ import annotations

import logging

from ._coordinate import EpochGather

log = logging.getLogger("kernel")


class ClusterLauncherSide:
    """`open_store(generation)`: this process's store file of the generation
    the run writes (known once the processes have agreed: `restored`)."""

    def __init__(self, open_store, kernels: int, process: int, processes: int, send, send_commit) -> None:
        self.open_store = open_store
        self.store = None
        self.kernels = kernels
        self.process = process
        self.processes = processes
        self.send = send
        self.send_commit = send_commit
        self._local: EpochGather | None = None
        self._cluster: EpochGather | None = None
        self._waiting: list[tuple[int, tuple]] = []  # kernel messages before `restored`

    def close(self) -> None:
        """The run is over: the store's connection closed now (one closed
        when collected checkpoints its WAL into the file then, after the
        run has returned)."""
        if self.store is not None:
            self.store.close()

    def restored(self, epoch: int, finished: bool, plan) -> None:
        """The run starts from `epoch` (agreed by every process at start-up),
        and writes the generation `plan[0]` (`kernel.state._generations`)."""
        self.store = self.open_store(plan[0])
        if plan[1] is not None:
            (_, cluster, _), kernels = plan[1][:2]
            log.warning("state_dir %s: epoch %d was written by %d kernel%s (%s); this run has %d (a cluster "
                        "of %d process%s): keyed state, timers and source positions move by key group",
                        self.store.directory, epoch, kernels, "s" if kernels > 1 else "",
                        "a cluster" if cluster else "one process", self.kernels * self.processes,
                        self.processes, "es" if self.processes > 1 else "")
        if finished:
            log.warning("state_dir %s: this flow already ran to the end (epoch %d); nothing to do "
                        "but publish any of its files left hidden", self.store.directory, epoch)
        elif epoch:
            log.warning("state_dir %s: resuming from epoch %d", self.store.directory, epoch)
        self._local = EpochGather(self.kernels, epoch, self._durable_here)
        if self.process == 0:
            self._cluster = EpochGather(self.processes, epoch, self._complete)
        waiting, self._waiting = self._waiting, []
        for kernel, message in waiting:
            self._local.message(kernel, message)

    def message(self, kernel: int, message: tuple) -> None:
        """A local kernel's report (`durable` or `finished`)."""
        if self._local is None:
            self._waiting.append((kernel, message))
        else:
            self._local.message(kernel, message)

    def remote(self, process: int, message: tuple) -> None:
        """Another process's launcher said something (through the relays)."""
        if message[0] == "complete":
            _, epoch, final = message
            self.store.mark_complete(epoch, final=final)
            self.send_commit(epoch, final)
        elif self._cluster is not None:  # process 0: a process's report
            self._cluster.message(process, message)

    def _durable_here(self, epoch: int, final: bool) -> None:
        report = ("finished", epoch) if final else ("durable", epoch)
        if self.process == 0:
            self._cluster.message(0, report)
        else:
            self.send(0, report)

    def _complete(self, epoch: int, final: bool) -> None:
        """Process 0: durable on every process."""
        self.store.mark_complete(epoch, final=final)
        for process in range(1, self.processes):
            self.send(process, ("complete", epoch, final))
        self.send_commit(epoch, final)
