"""A review of `Stream.broadcast()` (session 39): what its own tests left
open. A cluster's state_dir written by a flow with `broadcast()` resumes
only on as many kernels as wrote it, as on one process: the cluster's
offers carry `Graph.state_per_kernel()`, which no test checked (limited to
loops again, the cluster resumed on 4 kernels from 2 kernels' state)."""

from __future__ import annotations

import pytest
from test_cluster import outcomes_of

pytestmark = pytest.mark.usefixtures("no_leaks")


def _counts_of_every_record():
    from kernel import Dataflow

    flow = Dataflow("broadcast on a cluster")
    numbers = flow.from_partitions(lambda index, peers: list(range(index, 60, peers)))
    counts = numbers.broadcast().key_by(lambda n: n % 4).count().collect()
    return flow, [counts]


def test_a_clusters_state_dir_of_a_flow_with_broadcast_resumes_only_on_as_many_kernels(tmp_path):
    def with_state_dir(_process):
        return {"state_dir": tmp_path}

    first = outcomes_of(_counts_of_every_record, 2, 1, options_for=with_state_dir)
    assert first[0] == ("ok", [[repr((k, 2 * 15)) for k in range(4)]])
    again = outcomes_of(_counts_of_every_record, 2, 2, options_for=with_state_dir)
    for process in (0, 1):
        assert again[process][:2] == ("error", "StateError"), again
        assert ("was written by 2 kernels and this run has 4: a flow with broadcast() resumes on as many "
                "kernels as the run that wrote its state") in again[process][2]
