"""A coordinator's catalog written before a column was added (here
`jobs.shared_state`, --shared-state-dir, and `jobs.request`, a submit's id) opens: the column is added with
its default, and the jobs in it load."""

from __future__ import annotations

import socket
import sqlite3

import pytest

from kernel.system import _catalog


def test_a_catalog_from_before_shared_state_dir_opens_and_keeps_its_jobs(tmp_path):
    old = _catalog._SCHEMA.replace(",\n    shared_state INTEGER NOT NULL DEFAULT 0, request TEXT);", ");")
    assert old != _catalog._SCHEMA
    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    db.executescript(old)
    db.execute("INSERT INTO pipelines VALUES ('h', 'p.py', x'00')")
    db.execute("INSERT INTO jobs (id, seq, name, flow, pipeline, processes, cores, max_restarts, status, "
               "submitted) VALUES ('job-1', 1, 'p.py:flow', 'flow', 'h', 2, 1, 3, 'running', 0)")
    db.commit()
    db.close()
    catalog = _catalog.Catalog(tmp_path)
    try:
        (job,) = catalog.jobs()
        assert (job.id, job.status, job.shared_state, job.request) == ("job-1", "running", False, None)
        catalog.add_pipeline("h2", "q.py", b"x")
        new = catalog.new_job(name="q.py:flow", flow="flow", pipeline="h2", processes=2, cores=1,
                              executors=None, state_dir="/st", epoch_interval=None, max_restarts=3,
                              shared_state=True, request="r1")
        assert [(j.shared_state, j.request) for j in catalog.jobs()] == [(False, None), (True, "r1")]
        assert new.shared_state
    finally:
        catalog.close()


def test_a_damaged_catalog_stops_the_coordinator_with_one_line_saying_which_file(tmp_path):
    # (it was a raw `sqlite3.DatabaseError: file is not a database` traceback)
    import os
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    (data / "catalog.sqlite").write_bytes(b"\x00garbage, not SQLite\n" * 200)
    with socket.socket() as s:  # (a free port, never listened on: the catalog fails first)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "kernel", "coordinator", "--listen", f"127.0.0.1:{port}",
                           "--data", str(data)], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, KERNEL_SECRET="s"))
    assert done.returncode == 1
    catalog = data / "catalog.sqlite"
    assert done.stderr == f"error: the catalog {catalog} cannot be used: file is not a database\n"
    with pytest.raises(_catalog.CatalogError, match="cannot be used: file is not a database"):
        _catalog.Catalog(data)
