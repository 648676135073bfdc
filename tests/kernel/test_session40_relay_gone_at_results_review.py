"""Session 40 review (second round): a cluster process whose links process
(its relay) failed, its error written and its process gone, just as the
last kernel's results came in: the launcher handed the results to the relay
first, on a pipe no one read any more, and the run ended with a traceback,
`BrokenPipeError: [Errno 32] Broken pipe` from `_wait_for_results`, not the
relay's own error (a process 2 given --peers in another order: process 0's
kernels had finished as its abort came; 1 run in 25). The hand-over to a
relay gone is left; its error, in its pipe, is the run's."""

from __future__ import annotations

import multiprocessing
import pickle

import pytest
from kernel.net import LinkError

from kernel.execution._supervisor import _supervise

PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation

_fork = multiprocessing.get_context("fork")


def _relay(answer, handover) -> None:
    """A relay that failed before the results came: its error said, gone."""
    error = LinkError("process 2 (127.0.0.1:7002) failed: told to fail")
    answer.send(("error", ("LinkError", pickle.dumps(error), str(error))))


def _kernel(answer, go) -> None:
    go.recv()  # (its results once the relay is gone)
    answer.send(("ok", {"kernel": 0}))


def test_the_relays_error_is_the_runs_where_it_is_gone_as_the_results_come(tmp_path):
    kernel_answer, kernel_said = _fork.Pipe(duplex=False)
    relay_answer, relay_said = _fork.Pipe(duplex=False)
    handover_read, handover = _fork.Pipe(duplex=False)
    go_read, go = _fork.Pipe(duplex=False)
    kernel = _fork.Process(target=_kernel, args=(kernel_said, go_read))
    relay = _fork.Process(target=_relay, args=(relay_said, handover_read))
    kernel.start()
    relay.start()
    for end in (kernel_said, relay_said, handover_read, go_read):
        end.close()  # (the children's: the relay's end of the hand-over closes with it)
    try:
        relay.join(PROMPTLY)
        assert relay.exitcode == 0
        go.send(True)
        assert kernel_answer.poll(PROMPTLY)  # (both pipes readable as the launcher looks)
        with pytest.raises(LinkError, match="told to fail"):
            _supervise([kernel, relay], [kernel_answer, relay_answer], relay=(0, handover))
    finally:
        for child in (kernel, relay):
            child.kill()
            child.join(PROMPTLY)
        for end in (kernel_answer, relay_answer, handover, go):
            end.close()
