"""Shared by the benchmarks' tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def usage_error(capsys):
    """`usage_error(main, argv)`: what a benchmark's `main` wrote on stderr
    when it refused `argv` as argparse does (exit status 2)."""

    def refused(main, argv) -> str:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        return capsys.readouterr().err

    return refused


# A tenth of the loops `parallel_ceiling` spins by default (1,500,000): still
# a real fork-and-time of pinned processes, ~15 ms a loop on a quiet machine.
_SHORT_CEILING_LOOPS = 150_000


@pytest.fixture
def short_ceilings(monkeypatch):
    """The machine ceilings that benches/nexmark.py and pipelines.py sample
    beside their runs, spun a tenth as long: the tests of their tables check
    that a ceiling is printed, not its value (test_nexmark's own ceiling
    test checks that, at the default length). At the default the samples
    were 7.0 of nexmark's 12.8 s and 9.5 of pipelines' 14.5 s on a loaded
    2-CPU machine (each spin pinned to a CPU the other work also wants)."""
    import functools

    from benches import _report, nexmark, pipelines

    short = functools.partial(_report.parallel_ceiling, loops=_SHORT_CEILING_LOOPS)
    for module in (nexmark, pipelines):
        monkeypatch.setattr(module, "parallel_ceiling", short)
