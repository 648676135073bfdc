"""A review of today's changes (5eaa368..HEAD): each test fails on the code
it was written against, because of the bug its comment describes."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "system"))

from _system import System, wait_until  # noqa: E402


def test_two_new_executors_registering_while_the_catalog_cannot_be_written_get_ids_of_their_own(tmp_path):
    # A register whose catalog write fails is now kept in memory (`_save_executor`)
    # instead of failing. But `Catalog.new_executor_id` counts only the catalog's
    # rows, not the job master's executors in memory: the second new executor is
    # given the first's id ("e1" both), `register` finds it in `self.executors`
    # and takes its entry over, closing the first one's connection; the two then
    # take the id from each other on every reconnect (the flapping `own_id` was
    # written against).
    system = System(tmp_path)
    try:
        system.start_coordinator()
        catalog = sqlite3.connect(tmp_path / "data" / "catalog.sqlite", isolation_level=None)
        try:
            catalog.execute("BEGIN IMMEDIATE")  # (another program's write lock: every write fails after 1 s)
            first = system.start_executor(1)
            first_id = system.executor_id(first)
            second = system.start_executor(1)
            second_id = system.executor_id(second)
        finally:
            catalog.close()
        assert first_id != second_id, f"both executors were given the id {first_id!r}"
    finally:
        system.close()
