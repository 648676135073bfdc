"""Session 41 review: `coordinator --dashboard` read as a job's is
(`kernel.metrics parse_address`) no longer took an address with a space
around it, as it did before (read as a peer's, each stripped) and as the
same command's --listen still does: `--dashboard ' 127.0.0.1:0'` failed
before it started, exit 1, `error: dashboard  127.0.0.1:0: unknown host
(Name or service not known)`, and `'127.0.0.1:0 '` exit 2."""

from __future__ import annotations

import re

import pytest
from test_session41_readme_coordinator_dashboard import _coordinator


@pytest.mark.parametrize("given", [" 127.0.0.1:0", "127.0.0.1:0 ", "\t127.0.0.1:0\n"])
def test_a_coordinator_dashboard_with_spaces_around_it_listens(tmp_path, given):
    coordinator = _coordinator(tmp_path, given)
    try:
        seen = []
        while not seen or (seen[-1] and "coordinator dashboard on" not in seen[-1]):
            seen.append(coordinator.stderr.readline())
        said = re.search(r"coordinator dashboard on http://127\.0\.0\.1:[1-9]\d*/$", seen[-1].rstrip("\n"))
        assert said, seen
    finally:
        coordinator.terminate()
        coordinator.communicate(timeout=30)
