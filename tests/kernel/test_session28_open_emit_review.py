"""Review of the hold of what operators emit in `open()`/`restore()`
(kernel/runtime/_runtime.py, `Runtime._hold_during_open`):

* what a step's `restore()` emits in a resumed run was dropped with what
  `open()` emitted: a resumed run does not hand open's records on again
  (the snapshot's state holds them), but restore's were never handed on
  before (restore() runs in the resumed run only). README: "What `open`
  (or `restore`) emits ... goes on once every step is open and restored".

Each test compares against a plain-Python reference."""

from __future__ import annotations

import asyncio

import pytest
from test_session28_runtime_leftovers import EmitsAtOpen, Failing, Tally

from kernel import Dataflow, Operator, OperatorError, VirtualClock, run_async


class EmitsAtRestore(Operator):
    """Passes its input on; its snapshot is the number of batches it saw,
    and restore() emits ("restored", that number)."""

    def open(self, context):
        self.batches = 0

    def on_batch(self, port, batch):
        self.batches += 1
        self.emit(batch)

    def on_epoch(self, epoch):
        return self.batches

    def restore(self, snapshot):
        self.batches = snapshot
        self.emit([("restored", snapshot)])


def _flow(fail_at):
    clock = VirtualClock()
    flow = Dataflow("restore-emits")
    out = (flow.source(lambda: Failing(clock, 20, 6, fail_at), name="failing")
               .apply(EmitsAtOpen, name="at-open").apply(EmitsAtRestore, name="at-restore")
               .apply(Tally, name="tally").collect())
    return flow, clock, out


def _restored(record) -> bool:
    return isinstance(record, tuple) and record[0] == "restored"


def test_what_restore_emits_in_a_resumed_run_goes_on_once(tmp_path):
    """A run that fails at the fifth poll, resumed from its state_dir,
    hands on what restore() emits once: the tally counts ("restored", n)
    once, n the batches its snapshot had seen, beside every record and open's [100, 101] once
    (the snapshot holds those). Before the fix restore's record was
    dropped as open's are."""
    from tests._crash_runs import newest_complete

    flow, clock, _ = _flow(4)
    with pytest.raises(OperatorError, match="crashed"):
        asyncio.run(run_async(flow, clock=clock, state_dir=tmp_path, epoch_interval=0.002))
    assert newest_complete(tmp_path) >= 2  # resumed from a snapshot, not from the start
    flow, clock, out = _flow(None)
    asyncio.run(run_async(flow, clock=clock, state_dir=tmp_path, epoch_interval=0.002))
    restored = [item for item in out.items if _restored(item[0])]
    assert len(restored) == 1 and restored[0][1] == 1, out.items
    n = restored[0][0][1]
    assert 1 <= n <= 5  # (open's [100, 101] and at most the 4 polls before the crash)
    rest = [item for item in out.items if not _restored(item[0])]
    expected = [*(((at, i), 1) for at in range(6) for i in range(20)), (100, 1), (101, 1)]
    assert rest == sorted(expected, key=repr)
