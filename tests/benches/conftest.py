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
