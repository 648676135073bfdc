"""Session 40: two processes started with --process-id 0 (the twin's own
entry another port, as if on another machine). Twins of any other id are
found by the process they both dial (session 39); process 0 dials no one and
is dialled at the one address each peer lists, so a twin of it was never
dialled: it only timed out, saying `process 1 did not connect`, and the run
went on with the other. Now a process whose higher-numbered peers never
connected dials each once, at its start-up timeout: one linked to another
process of its id refuses it naming that one, and ends its run as a process
dialled by a twin does, the processes linked to it saying so."""

from __future__ import annotations

import pytest
from _ports import free_ports, listening, wait_until
from test_session35_cluster_links_review import PIPELINE, start
from test_session39_twin_process_id import ended_by_a_late_third

PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_a_twin_of_process_zero_ends_the_run_naming_the_id_and_both_addresses(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    a, b, c = free_ports(3)
    procs = [start(tmp_path, 0, f"127.0.0.1:{a},127.0.0.1:{b}", "p0")]

    def then_process_1() -> None:
        wait_until(lambda: listening(a), timeout=PROMPTLY, what="process 0 to listen")
        procs.append(start(tmp_path, 1, f"127.0.0.1:{a},127.0.0.1:{b}", "p1"))

    # the twin waits its start-up timeout for a process 1, which linked the other
    codes, errors = ended_by_a_late_third(
        tmp_path, procs, (0, f"127.0.0.1:{c},127.0.0.1:{b}", "twin", "--startup-timeout", "1"),
        ("p0", "p1", "twin"), then=then_process_1)
    twins = ("two processes claim process id 0: one at 127.0.0.1 (linked), another at 127.0.0.1 (refused): "
             "is --process-id 0 given to two processes, or do the --peers lists differ?")
    assert codes == [1, 1], errors
    assert errors["p1"].endswith(f"error: {twins}\n"), errors
    assert errors["p0"] == f"error: process 1 (127.0.0.1:{b}) failed: {twins}\n"
    assert errors["twin"] == (
        f"error: process 1 at http://127.0.0.1:{b} refused this process (0): process 0 at 127.0.0.1 is "
        "already linked there (is --process-id 0 given to two processes, or do the --peers lists differ?)\n")
    assert (tmp_path / "p0.out").read_text() == ""  # no result of a run with a twin
