"""Which CPUs kernels are pinned to: one hardware thread of every physical
core before any core's second (`kernel.execution._cores.one_per_core_first`),
read from a sysfs-like tree written here, against the orders worked out by
hand; and the real run's kernels on the CPUs it says."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel import Dataflow, run
from kernel.execution._cores import _cpu_list, _cpus_for, one_per_core_first


def topology(tmp_path, cores: list[list[int]]) -> str:
    """A sysfs-like tree where each list of `cores` is one core's threads;
    returns the path pattern one_per_core_first reads."""
    for threads in cores:
        for cpu in threads:
            folder = tmp_path / f"cpu{cpu}" / "topology"
            folder.mkdir(parents=True)
            (folder / "thread_siblings_list").write_text(",".join(map(str, threads)) + "\n")
    return str(tmp_path / "cpu{}" / "topology" / "thread_siblings_list")


@pytest.mark.parametrize("cores, allowed, expected", [
    # siblings next to each other (AMD, some ARM): kernels 0 and 1 must not share a core
    ([[0, 1], [2, 3], [4, 5], [6, 7]], range(8), [0, 2, 4, 6, 1, 3, 5, 7]),
    # siblings a socket's width apart (most Intel): the order as it was
    ([[0, 4], [1, 5], [2, 6], [3, 7]], range(8), [0, 1, 2, 3, 4, 5, 6, 7]),
    # no SMT (this machine, a VM that hides it): as it was
    ([[0], [1], [2]], range(3), [0, 1, 2]),
    # a restricted affinity: a core whose first thread is not allowed counts its second as first
    ([[0, 1], [2, 3], [4, 5]], [1, 2, 3, 5], [1, 2, 5, 3]),
])
def test_kernels_take_one_thread_of_each_core_before_a_second(tmp_path, cores, allowed, expected):
    assert one_per_core_first(list(allowed), topology(tmp_path, cores)) == expected


def test_without_a_readable_topology_the_cpus_stay_in_order(tmp_path):
    assert one_per_core_first([0, 1, 2, 3], str(tmp_path / "cpu{}" / "missing")) == [0, 1, 2, 3]
    garbled = topology(tmp_path, [[0, 1]])
    (tmp_path / "cpu1" / "topology" / "thread_siblings_list").write_text("zero\n")
    assert one_per_core_first([0, 1], garbled) == [0, 1]


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 4)), max_size=6))
def test_a_cpu_list_reads_ranges_and_single_cpus(ranges):
    text = ",".join(f"{low}-{low + span}" if span else str(low) for low, span in ranges)
    expected = [cpu for low, span in ranges for cpu in range(low, low + span + 1)]
    assert (_cpu_list(text + "\n") if ranges else []) == expected


def test_each_kernel_runs_on_the_cpu_the_placement_gives():
    flow = Dataflow()
    kernels = flow.from_partitions(lambda index, peers: [index])
    out = kernels.map(lambda index: (index, sorted(os.sched_getaffinity(0)))).collect()
    run(flow, cores=2)
    assert sorted(out.items) == [(index, [cpu]) for index, cpu in enumerate(_cpus_for(2))]
