"""Resuming on another number of kernels: every old kernel's snapshot of the
restored epoch, cut by key group for this kernel.

Each kernel of the resumed run is handed the snapshots of every kernel of
the run that wrote the epoch (`Rescaled`). For each of its instances it
gathers that step's parts from all of them and:

* the step stays ended if it had ended on every old kernel (and so on every
  new one: whether a step ended is the same for the whole run, so the
  channels it feeds are closed alike on every kernel); what its operator
  kept at its end on each old kernel (an `Ended` part: a file source's
  skipped count) it gathers for the new ones (`rescale_ended`, an internal
  hook; without it, the step's parts are plain ENDED);
* its timers go to the kernel that owns their data as a key (timers set
  with `schedule(t, key)`; data that is not a key goes to kernel 0), and
  a timer without data (`schedule(t)`) to every kernel, once per time;
* its input frontier (a source's output watermark) is the lowest of the old
  kernels': the safe one, no window fires early;
* its operator cuts its own snapshot (`Operator.rescale(snapshots, owns)`):
  keyed state by key group, source positions by the sources' partitions.

A combiner's partial half holds nothing in a snapshot (it hands its
partials on at each marker), so a run with and without partial halves (one
kernel or several) restore the same steps; only the late events a windowed
aggregate's partial halves counted are kept, and a run on one kernel (no
partial halves) adds them to the step's count on kernel 0. Loops keep per-kernel round
state that is not cut by key: a flow with loops resumes on as many kernels
as the run that wrote its state (refused before the run starts).
"""

from __future__ import annotations

from kernel.dataflow._errors import PASSES_THROUGH
from kernel.dataflow._operator import NONE_KEY, Operator

from ._epochs import ENDED, Ended, snapshot_parts, unpickled_part
from ._instance import _call


class Rescaled:
    """The snapshots of every kernel of the run being resumed (in the
    place of one kernel's own snapshot)."""

    __slots__ = ("blobs",)

    def __init__(self, blobs: list) -> None:  # (each bytes or `Parts`: `snapshot_parts`)
        self.blobs = blobs


def resume_checks(graph, blobs: list[bytes], recorded: dict | None) -> tuple[str | None, str | None]:
    """Whether a run can resume from `blobs` (each old kernel's snapshot of
    the restored epoch) as it is: `(refusal, cut)`.

    `cut`: why a run resumed on as many kernels must still restore every
    kernel from all of them, as one resumed on another number does: a step
    (`Node.cut_on_resume`) that had ended on some kernels and has work there
    now. Restored from its own snapshot, such a kernel would find the step
    ended and never run it again; cut from all of them, a step is ended only
    where it had ended everywhere (see the module).

    `refusal`: such a step that had ended on every kernel. No cut reopens
    it (its end has reached every step after it: a count has emitted, a
    window flushed), so the run cannot do that work, on any number of
    kernels: it is refused rather than leave it undone. `recorded` is what
    the run that wrote `blobs` recorded of its steps (`Node.resume_record`,
    by step index; None if unknown), for the steps whose snapshots then say
    nothing. None, None: each kernel's own snapshot is enough."""
    if not checked_steps(graph):
        return None, None
    # (the parts stay pickled: only the checked are read)
    return resume_checks_of(graph, [snapshot_parts(blob) for blob in blobs], recorded)


def checked_steps(graph) -> set[int]:
    """The steps `resume_checks` reads (by index)."""
    return {node.id for node in graph.nodes if node.cut_on_resume is not None}


def resume_checks_of(graph, old: list[dict], recorded: dict | None) -> tuple[str | None, str | None]:
    """`resume_checks`, given each old kernel's parts by step index (at least
    those of the `checked_steps`)."""
    checked = [node for node in graph.nodes if node.cut_on_resume is not None]
    cut = None
    for node in checked:
        parts = [kernel_parts.get(node.id, ENDED) for kernel_parts in old]
        snapshots = [Operator.ENDED if part == ENDED else unpickled_part(node.name, part)[4]
                     for part in parts]
        reason = node.cut_on_resume(snapshots, (recorded or {}).get(str(node.id)))
        if reason is None:
            continue
        if all(part == ENDED for part in parts):
            return f"step {node.name!r} {reason}", None
        cut = cut or f"step {node.name!r} {reason}"
    return None, cut


def resume_record(graph) -> dict:
    """What a run records of its steps in its state_dir (`Node.resume_record`),
    by step index (a str: the record is JSON)."""
    return {str(node.id): node.resume_record for node in graph.nodes if node.resume_record is not None}


def restore_rescaled(runtime, rescaled: Rescaled) -> None:
    """Restore `runtime`'s instances from every old kernel's snapshot."""
    old = [snapshot_parts(blob) for blob in rescaled.blobs]
    graph_nodes = len(runtime.graph.nodes)
    old_partial_index = _old_partials(runtime, len(old))
    parts_of: dict[int, list] = {}
    for index in range(len(runtime.instances)):
        if index < graph_nodes:
            parts_of[index] = [kernel_parts.get(index, ENDED) for kernel_parts in old]
        else:  # a partial half: its parts in the old run, if that had them
            old_index = old_partial_index.get(runtime._partial_for[index])
            parts_of[index] = (None if old_index is None else
                               [kernel_parts.get(old_index, ENDED) for kernel_parts in old])
    ended = {}
    for index in range(len(runtime.instances)):
        parts = parts_of[index]
        if parts is None:  # no old partial half: it ended if what feeds it had
            upstream = runtime.upstream_of[(id(runtime.instances[index]), 0)]
            parts = parts_of[upstream.index]
        ended[index] = all(part == ENDED for part in parts)
    me = runtime.kernel.context.index
    owns = runtime.partitioner.owned_by(me) if runtime.partitioner is not None else _everything
    # Partial halves this run does not have (it runs on one kernel): the
    # late events they had counted go to their node's count on kernel 0.
    orphan_late = {} if me != 0 else {
        node_id: _late_of(runtime.instances[node_id].name,
                          [kernel_parts.get(old_index, ENDED) for kernel_parts in old])
        for node_id, old_index in old_partial_index.items() if node_id not in runtime._partial_for.values()}

    for index, instance in enumerate(runtime.instances):
        if ended[index]:
            runtime.restored_ended(instance, _ended_part(instance, parts_of[index], me))
            continue
        parts = [part if part == ENDED else unpickled_part(instance.name, part)
                 for part in parts_of[index] or []]
        live = [part for part in parts if part != ENDED]
        snapshots = [Operator.ENDED if part == ENDED else part[4] for part in parts]
        _restore_one(runtime, instance, live, snapshots, ended, owns, me, orphan_late.get(index, 0))
    if runtime._live == 0:
        runtime.kernel.release()


def _restore_one(runtime, instance, live: list, snapshots: list, ended: dict, owns, me: int,
                 late: int = 0) -> None:
    progress = instance.progress
    frontier = min((part[0] for part in live), default=progress.value)
    closed = sorted(inbox for inbox in range(len(progress.marks))
                    if ended[runtime.upstream_of[(id(instance), inbox)].index])
    marks = [progress._top if inbox in closed else frontier for inbox in range(len(progress.marks))]
    timers = [timer for part in live for timer in part[3]
              if timer[2] is not None and _timer_is_mine(timer[2], owns, me)]
    # A timer without data (`schedule(t)`) is its kernel's, not a key's: it
    # may be due to flush keys that are now on any kernel, so every kernel
    # gets one per time.
    unkeyed: dict = {}
    for part in live:
        for when, sequence, data in part[3]:
            if data is None:
                unkeyed[when] = min(sequence, unkeyed.get(when, sequence))
    timers += [(when, sequence, None) for when, sequence in unkeyed.items()]
    if not snapshots:  # a partial half the old run did not have: it starts empty
        instance.restore_part((frontier, marks, closed, timers, None))
        return
    operator_snapshot = _call(instance, "rescale", snapshots, owns)
    if late and isinstance(operator_snapshot, dict) and "late" in operator_snapshot:
        operator_snapshot["late"] += late
    instance.restore_part((frontier, marks, closed, timers, operator_snapshot))
    _call(instance, "restore", operator_snapshot)


def _ended_part(instance, parts: list | None, me: int) -> str:
    """What stands for `instance` restored as ended on kernel `me`: an
    `Ended` with what its operator makes of what it kept on the old kernels
    (`rescale_ended(kept, first)`, `first` on kernel 0 of this run), or
    ENDED. Plain ENDED lost it: a file source's skipped count after a resume
    on another number of kernels, from an epoch where every kernel's share
    had been read to its end, was 0."""
    kept = [part.snapshot for part in parts or () if part.__class__ is Ended]
    if not kept or not hasattr(instance.op, "rescale_ended"):
        return ENDED
    snapshot = _call(instance, "rescale_ended", kept, me == 0)
    return ENDED if snapshot is None else Ended(snapshot)


def _late_of(step: str, parts: list) -> int:
    """The late events a step's old partial halves had counted (a
    windowed aggregate's partial half counts those its kernel found late)."""
    total = 0
    for part in parts:
        if part != ENDED:
            snapshot = unpickled_part(step, part)[4]
            if isinstance(snapshot, dict):
                total += snapshot.get("late", 0)
    return total


def _everything(key) -> bool:
    return True  # one kernel owns every key


def _timer_is_mine(data, owns, me: int) -> bool:
    try:
        return owns(None if data is NONE_KEY else data)
    except PASSES_THROUGH:  # a Ctrl-C that lands here is a Ctrl-C
        raise
    except BaseException:
        # Not a key (unhashable, no stable hash): kernel 0 keeps it, whatever
        # the data's own __eq__, __reduce__ or __float__ raised, an Exception
        # or not (as `Partitioner.failing_pair`). Only Exception was caught: a
        # `class Stop(BaseException)` from the data ended the resumed run
        # with "kernel 0 failed: Stop", naming no step and no record.
        return me == 0


def _old_partials(runtime, old_kernels: int) -> dict[int, int]:
    """node id -> the index its partial half had in the old run's
    snapshots: after the graph's nodes, in the order the runtime makes them
    (only when that run had several kernels)."""
    if old_kernels == 1:
        return {}
    combining = [node.id for node in runtime.graph.nodes if runtime._combines(node)]
    first = len(runtime.graph.nodes)
    return {node_id: first + rank for rank, node_id in enumerate(combining)}
