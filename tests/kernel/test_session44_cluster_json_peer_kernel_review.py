"""Session 44 review: `--log-format json`'s `kernel` field for a peer that
never came names it from either side. Process 0 whose process 1 never
linked named kernel 1; process 1 whose process 0 never came (its pipeline
file raising at import) said `could not reach process 0 ...` with no
`kernel`, though with one core a process, process 0 runs kernel 0. And
with several cores a process, no one kernel is named."""

from __future__ import annotations

from tests.kernel.test_session44_cluster_json_peer_kernel import BROKEN_IN_ONE, _cluster, _last_words

BROKEN_IN_ZERO = BROKEN_IN_ONE.replace('== "1"', '== "0"')


def test_a_lower_peer_that_never_came_names_its_kernel_as_a_field(tmp_path):
    procs = _cluster(tmp_path, BROKEN_IN_ZERO, "--startup-timeout", "2")
    own, heard = _last_words(procs)
    assert own["message"].startswith("importing "), own
    assert heard["message"].startswith("could not reach process 0 at "), heard
    assert heard["kernel"] == 0 and "step" not in heard, heard


def test_a_peer_of_several_cores_that_never_came_names_no_kernel(tmp_path):
    procs = _cluster(tmp_path, BROKEN_IN_ONE, "--startup-timeout", "2", "--cores", "2")
    heard, own = _last_words(procs)
    assert own["message"].startswith("importing "), own
    assert heard["message"].endswith("did not connect within 2 s"), heard
    assert "kernel" not in heard and "step" not in heard, heard
