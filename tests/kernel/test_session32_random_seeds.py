"""`random` in kernel processes (kernel/execution/_random_seeds.py): CPython
seeds it again from the system's entropy in every forked child, so a
caller's `random.seed(7)` gave other numbers in every run of two kernels,
where one kernel gave the same ones every time."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import pytest

CODE = """
    import random
    from kernel import Dataflow, current_kernel, run
    {seed}
    def draws():
        flow = Dataflow("draws")
        out = flow.from_iterable(range(40)).map(
            lambda x: (x, current_kernel().context.index, random.random())).collect()
        run(flow, cores={cores})
        return sorted(out.items)
    print(repr([draws(), draws()]))
"""


def _draws(seed: str, cores: int) -> list:
    code = textwrap.dedent(CODE.format(seed=seed, cores=cores))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return ast.literal_eval(done.stdout.decode())


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_a_seeded_caller_gets_the_same_numbers_in_every_process_and_new_ones_at_each_run(cores):
    first, again = _draws("random.seed(7)", cores), _draws("random.seed(7)", cores)
    assert first == again  # the same two runs in another process
    one, two = first
    assert [x for x, _, _ in one] == list(range(40))
    assert [d for _, _, d in one] != [d for _, _, d in two]  # the generator moved on between the runs
    by_kernel = {}
    for _, kernel, drawn in one:
        by_kernel.setdefault(kernel, []).append(drawn)
    assert sorted(by_kernel) == list(range(cores))
    assert len({drawn for drawn in (values[0] for values in by_kernel.values())}) == cores  # kernels differ


def test_an_unseeded_caller_gets_other_numbers_in_each_process():
    assert _draws("", 2)[0] != _draws("", 2)[0]
