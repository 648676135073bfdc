"""Session 43 review: a cluster process that fails tells its peers why
(ABORT), with the failed kernel and step (`net._relay._abort_body`). An
error whose text holds a lone surrogate (a file name not in UTF-8, as
Python decodes it: `os.fsdecode(b"\\xff.csv")`, a FileNotFoundError of a
listed directory) could not be encoded: the relay failed as it told
them, and each peer said only `lost process 1 (...): it closed the link
(code 1000)`, with neither field. The body writes it `\\udcff` now, as the
failing process prints it. The same for a peer's ABORT heard and told on
(three processes): a JSON body may carry a surrogate escaped."""

from __future__ import annotations

from net._relay import _abort_body, _abort_said
from tests.kernel.test_session42_json_error_fields import FAILING
from tests.kernel.test_session43_cluster_json_error_fields import cluster_last_words

UNDECODABLE = FAILING.replace('raise ValueError(f"bad record {n}")',
                              'raise ValueError("bad file " + __import__("os").fsdecode(b"\\xff.csv"))')


def test_a_peers_error_naming_a_file_not_in_utf8_is_heard_with_its_kernel_and_step(tmp_path):
    assert UNDECODABLE != FAILING
    heard, own = cluster_last_words(tmp_path, UNDECODABLE)
    assert own["message"].endswith("raised ValueError: bad file \udcff.csv\n  on record: 3"), own
    assert heard["message"].startswith("process 1 (127.0.0.1:"), heard
    assert "bad file \\udcff.csv" in heard["message"], heard
    assert (heard["kernel"], heard["step"]) == (1, "map(parse) (step 1)"), heard


def test_an_abort_heard_with_a_surrogate_is_told_on():
    heard = _abort_said(b'{"why": "bad file \\udcff.csv", "kernel": 1, "step": "map (step 1)"}')
    assert heard == ("bad file \udcff.csv", 1, "map (step 1)")
    assert _abort_said(_abort_body(*heard)) == ("bad file \\udcff.csv", 1, "map (step 1)")
    assert _abort_said(_abort_body("plain \udcff", None, None)) == ("plain \\udcff", None, None)
