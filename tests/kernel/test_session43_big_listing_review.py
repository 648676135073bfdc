"""A cluster reading files, bounded, whose listing is larger than a link's
largest frame (16 MiB, compressed: a million files or so): the processes
agree on process 0's listing in pieces. (The start-up agreement went in
one frame: the link refused it, and every process ended with the links
broken, `link to process 1 closed: code 1009` (message too big), before
any kernel started.)"""

from __future__ import annotations

import base64
import os

import kernel.operators as ops
import pytest
from test_cluster import outcomes_of

from kernel import Dataflow

pytestmark = pytest.mark.usefixtures("no_leaks")

ENTRIES = 24_000  # of ~940 random characters each: ~18 MB compressed


def test_a_listing_past_a_links_largest_frame_is_agreed_on_in_pieces(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("a\n")
    listed = ops.list_files(str(tmp_path / "a.txt"))
    # Files that cannot be read, listed after the one that can: every kernel
    # that got process 0's listing refuses the run naming one of them.
    unreadable = [(f"{tmp_path}/{base64.b85encode(os.urandom(750)).decode()}", 0, None, "gone")
                  for _ in range(ENTRIES)]
    monkeypatch.setattr(ops, "list_files", lambda pattern: listed + unreadable)

    def build():
        flow = Dataflow("many files")
        return flow, [flow.from_files(tmp_path / "a.txt").collect()]

    outcomes = outcomes_of(build, 2)
    for process, (status, *why) in outcomes.items():
        assert status == "error" and "cannot read" in str(why) and "gone" in str(why), (process, why)
