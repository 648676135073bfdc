"""Session 28, a review of the data directory's claim (an abstract socket
beside catalog.lock) and of the CLI asking again while the catalog is busy,
tried with real catalogs, coordinators and CLI processes.

What a demanding operator expects:
* a data directory SQLite cannot take is refused saying why;
* a second coordinator on a data directory whose catalog.lock was deleted
  (or moved with it)
  is refused naming the first, the tenth time as the first, and whatever
  bytes the directory's name holds;
* the claim goes with the coordinator: not kept by a child it started;
* Ctrl-C while the CLI waits for a busy catalog ends it at once (130,
  `interrupted`); a catalog that never frees ends it, past its time, naming
  the holder and how long it asked."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

from _system import System
from test_catalog_lock_review import _hold, _release
from test_session28_catalog_leftovers import _WAITING, _cli, _up
from test_system import NOOP, write

from kernel.system._catalog import Catalog, CatalogError


def _refused(data) -> str:
    try:
        Catalog(data).close()
    except CatalogError as exc:
        return str(exc)
    return "started"


def test_every_refused_second_coordinator_names_the_first(tmp_path):
    # The claim's listening socket never accepted: each refused start left
    # its probe's connection queued, the backlog (1) was full after two, and
    # from the third on the first was named "pid ?".
    first = Catalog(tmp_path / "data")
    try:
        shutil.rmtree(tmp_path / "data")
        said = [_refused(tmp_path / "data") for _ in range(6)]
    finally:
        first.close()
    assert said == [f"the data directory {tmp_path / 'data'} is in use by another coordinator "
                    f"(pid {os.getpid()}), though its catalog.lock is gone (deleted or moved while that one "
                    "runs): stop it first"] * 6, said
    assert _refused(tmp_path / "data") == "started"  # (closed: the directory is free)


def test_a_data_directory_whose_name_is_not_utf8_is_claimed(tmp_path):
    # Its path was hashed as `str.encode()`: a name that is not UTF-8 (a
    # surrogate escape in Python) stopped the coordinator's start with a
    # UnicodeEncodeError traceback.
    data = tmp_path / os.fsdecode(b"data-\xff")
    first = Catalog(data)
    try:
        shutil.rmtree(data)
        said = _refused(data)
    finally:
        first.close()
    assert said.endswith(f"(pid {os.getpid()}), though its catalog.lock is gone (deleted or moved while "
                         "that one runs): stop it first"), said


_PARENT = """\
import subprocess, sys
from kernel.system._catalog import Catalog
catalog = Catalog(sys.argv[1])
child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"], close_fds=False,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
"""


def test_a_child_that_outlives_its_coordinator_does_not_keep_the_claim(tmp_path):
    # (passes before: the socket is made close-on-exec, as Python makes them,
    # so a started program never holds it; os.fork without exec would, and
    # would keep catalog.lock's flock as well)
    parent = subprocess.run([sys.executable, "-c", _PARENT, str(tmp_path / "data")], capture_output=True,
                            text=True, timeout=20, stdin=subprocess.PIPE)
    assert parent.returncode == 0, parent.stderr
    child = int(parent.stdout)
    try:
        # (it outlives the coordinator: a child reading its stdin, a pipe from
        # the coordinator, ended with it, and the test passed whatever it held)
        with open(f"/proc/{child}/stat") as stat:
            assert stat.read().split(") ")[1][0] in "SR"  # alive, not a zombie
        shutil.rmtree(tmp_path / "data")
        assert _refused(tmp_path / "data") == "started"
    finally:
        os.kill(child, signal.SIGKILL)


def test_ctrl_c_while_waiting_for_a_busy_catalog_ends_the_submit_at_once(tmp_path):
    # (passes before)
    system = System(tmp_path)
    try:
        _up(system)
        pipeline = write(tmp_path / "noop.py", NOOP)
        holder = _hold(system)
        try:
            cli = _cli(system, "submit", pipeline)
            assert _WAITING.fullmatch(cli.stderr.readline())
            cli.send_signal(signal.SIGINT)
            out, err = cli.communicate(timeout=5)
        finally:
            _release(holder)
        assert (cli.returncode, out, err) == (130, "", "interrupted\n")
        assert system.status()["jobs"] == []
    finally:
        system.close()


_SHORT = ("import sys; from kernel.system import _client; _client.REQUEST_TIMEOUT = 1.5; "
          "from kernel.system._cli import main; sys.exit(main(sys.argv[1:]))")


def test_a_catalog_that_never_frees_ends_the_submit_naming_its_holder(tmp_path):
    # (passes before; the CLI's wait cut to 1.5 s)
    system = System(tmp_path)
    try:
        _up(system)
        pipeline = write(tmp_path / "noop.py", NOOP)
        holder = _hold(system)
        try:
            cli = subprocess.run([sys.executable, "-c", _SHORT, "submit", pipeline], capture_output=True,
                                 text=True, timeout=20, env=system.env, cwd=system.root)
        finally:
            _release(holder)
        assert system.status()["jobs"] == []
        assert (cli.returncode, cli.stdout) == (1, ""), cli
        waiting, error = cli.stderr.splitlines()
        # (the first try waits 0.5 s, or what is left of the request's 1.5 s
        # when the CLI was slow to start: a loaded machine)
        first = re.fullmatch(
            rf"waiting for the coordinator's catalog \(database is locked: pid {holder.pid} \(python\) "
            r"has held it for more than ([\d.]+) s( \(as long as the request's sender waits for its "
            r"answer\))?\); asking again until 1.5 s from the command's start", waiting)
        assert first and float(first[1]) <= 0.5, waiting
        gave_up = re.fullmatch(
            rf"error: the catalog {re.escape(str(tmp_path / 'data' / 'catalog.sqlite'))} cannot be written "
            rf"\(database is locked: pid {holder.pid} \(python\) has held it\): the job "
            r"was not submitted \(waited ([\d.]+) s in all\)", error)
        assert gave_up and 1.2 <= float(gave_up[1]) <= 1.5, error  # (session 29: from the command's start)
    finally:
        system.close()


def test_a_data_directory_too_long_for_sqlite_is_refused_saying_so(tmp_path):
    # The claim's name is a hash (66 bytes, whatever the path's length); the
    # catalog's path is SQLite's to open, and SQLite takes none of 512 bytes
    # or more: it said "unable to open database file" alone.
    data = tmp_path.joinpath(*["d" * 99] * 6)  # (a 4,000-character one fails the same)
    catalog = data / "catalog.sqlite"
    said = _refused(data)
    assert said == (f"the catalog {catalog} cannot be used: unable to open database file (SQLite opens no "
                    f"path of 512 bytes or more: this one has {len(os.fsencode(catalog))})"), said
    assert _refused(data) == said  # (again: its claim, made before SQLite refused, was let go)


def test_a_data_directory_moved_under_its_coordinator_is_named_so(tmp_path):
    # Its name stays claimed (the claim is made at the start, by path): a
    # coordinator started on that path was told the catalog.lock was
    # "deleted", where it had been moved with its directory.
    first = Catalog(tmp_path / "data")
    try:
        (tmp_path / "data").rename(tmp_path / "moved")
        at_the_old_path, at_the_new = _refused(tmp_path / "data"), _refused(tmp_path / "moved")
    finally:
        first.close()
    assert at_the_old_path == (f"the data directory {tmp_path / 'data'} is in use by another coordinator "
                               f"(pid {os.getpid()}), though its catalog.lock is gone (deleted or moved "
                               "while that one runs): stop it first"), at_the_old_path
    assert at_the_new == (f"the catalog {tmp_path / 'moved' / 'catalog.sqlite'} is in use by another "
                          f"coordinator (pid {os.getpid()})"), at_the_new
