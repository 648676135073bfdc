"""A run on several kernels started inside a kernel process (a step of a
run on 2 kernels calling `run(flow, cores=2)` on a thread of its own, as
run() blocks): multiprocessing refuses a daemonic process children, and
the nested run failed with its bare AssertionError ("daemonic processes
are not allowed to have children"), naming neither the run nor a remedy.
Now it is refused before anything starts, saying why and what to do; on
one kernel the nested run runs there."""

from __future__ import annotations

import threading

import pytest

from kernel import Dataflow, run


def _nested(cores: int):
    def step(value):
        told = []

        def runs():
            inner = Dataflow("inner")
            out = inner.from_iterable(range(10)).map(lambda v: v * value).collect()
            try:
                run(inner, cores=cores)
                told.append(sum(out.items))
            except BaseException as exc:  # (raised in the step, naming it)
                told.append(exc)

        thread = threading.Thread(target=runs)
        thread.start()
        thread.join()
        if isinstance(told[0], BaseException):
            raise told[0]
        return told[0]

    return step


def test_a_run_on_two_kernels_inside_a_kernel_process_is_refused_saying_why():
    outer = Dataflow("outer")
    outer.from_iterable([1, 2], name="values").map(_nested(2)).collect()
    with pytest.raises(Exception) as refused:
        run(outer, cores=2)
    told = str(refused.value)
    assert "RuntimeError: a run on 2 kernel processes (cores=2, or peers=) cannot start here: this process " \
           "is daemonic" in told, told
    assert "or from the process that started the outer run" in told  # (the remedy; its middle elided)
    assert "AssertionError" not in told


def test_a_run_on_one_kernel_inside_a_kernel_process_runs():
    outer = Dataflow("outer")
    sums = outer.from_iterable([1, 2], name="values").map(_nested(1)).collect()
    run(outer, cores=2)
    assert sorted(sums.items) == [45, 90]
