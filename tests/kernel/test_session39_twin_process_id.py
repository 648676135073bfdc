"""Session 39: two processes started with one --process-id. The first to
connect was taken and the other refused: where the first was the twin (the
wrong machine), the run went on with it, exit 0, a warning its only word,
and the process meant to be there failed. No end can tell which of the two
is meant, so the run of the process they both dialled ends, naming the id
and both addresses, and the processes linked to it end saying so."""

from __future__ import annotations

import pytest
from _ports import free_ports, wait_until
from _procs import without_stall_reports
from test_session35_cluster_links_review import PIPELINE, start

PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")


def ended_by_a_late_third(tmp_path, procs: list, late: tuple, names: tuple, then=None) -> tuple:
    """`procs`, two processes started; `then()` (starting the second, say),
    and once their cluster has formed a third one (`start(tmp_path, *late)`),
    which must fail; the first two then told to end (`go`). Their exit codes,
    and each process's error output by `names`."""
    try:
        if then is not None:
            then()
        wait_until(lambda: (tmp_path / "started").exists(), what="the cluster to form", timeout=PROMPTLY)
        procs.append(start(tmp_path, *late))
        assert procs[2].wait(PROMPTLY) == 1
        (tmp_path / "go").touch()  # (the run went on without a word: it ended, exit 0)
        codes = [p.wait(PROMPTLY) for p in procs[:2]]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return codes, {name: without_stall_reports((tmp_path / f"{name}.err").read_text()) for name in names}


def test_a_twin_linked_first_ends_the_run_naming_the_id_and_both_addresses(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    a, b, c = free_ports(3)
    # the twin's own entry another port (as if on another machine): it links first
    procs = [start(tmp_path, 0, f"127.0.0.1:{a},127.0.0.1:{b}", "p0"),
             start(tmp_path, 1, f"127.0.0.1:{a},127.0.0.1:{c}", "twin")]
    codes, errors = ended_by_a_late_third(tmp_path, procs, (1, f"127.0.0.1:{a},127.0.0.1:{b}", "p1"),
                                          ("p0", "twin", "p1"))
    twins = ("two processes claim process id 1: one at 127.0.0.1 (linked), another at 127.0.0.1 (refused): "
             "is --process-id 1 given to two processes, or do the --peers lists differ?")
    assert codes == [1, 1], errors
    assert errors["p0"].endswith(f"error: {twins}\n"), errors
    assert errors["twin"] == f"error: process 0 (127.0.0.1:{a}) failed: {twins}\n"
    assert errors["p1"] == (
        f"error: process 0 at http://127.0.0.1:{a} refused this process (1): process 1 at 127.0.0.1 is "
        "already linked there (is --process-id 1 given to two processes, or do the --peers lists differ?)\n")
    assert (tmp_path / "p0.out").read_text() == ""  # no result of a run with the wrong process
