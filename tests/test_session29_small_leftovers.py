"""Session 29: small robustness items left by earlier sessions.

1. A cluster run forks its links process (net/_links.py), which imported
   `encodings.idna` (and `stringprep`) after the fork, resolving or
   encoding a peer's host, with a name ("localhost") as with an address. A
   thread of the application importing it at the fork holds its import lock
   in the child too, where nothing releases it: the links hung (session 28
   fixed the same for the kernels)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "kernel"))
from _ports import free_ports

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# -- 1. the links process imports nothing after its fork ------------------------------------

MEMBER = textwrap.dedent("""\
    import multiprocessing, os, sys

    PARENT = os.getpid()

    def hook(event, args):  # "import": each module actually loaded, in the process loading it
        if event == "import" and os.getpid() != PARENT:
            name = multiprocessing.current_process().name
            os.write(1, f"{name} imports {args[0]}\\n".encode())

    sys.addaudithook(hook)
    from kernel import Dataflow, run

    index, peers = int(sys.argv[1]), sys.argv[2]
    flow = Dataflow("numbers")
    out = flow.from_iterable(range(100)).key_by(lambda n: n % 7).map(lambda kv: kv[1]).collect()
    run(flow, process_id=index, peers=peers, secret="session-29-secret-" * 2, cores=2)
    print("done", sorted(out.items))
    """)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_the_links_process_of_a_cluster_imports_nothing_after_the_fork(tmp_path, host):
    script = tmp_path / "member.py"
    script.write_text(MEMBER)
    peers = ",".join(f"{host}:{port}" for port in free_ports(2))
    members = [subprocess.Popen([sys.executable, str(script), str(i), peers], cwd=tmp_path, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    outputs = []
    try:
        for member in members:
            outputs.append(member.communicate(timeout=40))
    finally:
        for member in members:
            if member.poll() is None:
                member.kill()
                member.wait()
    assert [m.returncode for m in members] == [0, 0], [err for _, err in outputs]
    # (a cluster's collect handles fill on process 0)
    got = [line for out, _ in outputs for line in out.splitlines()]
    assert sorted(got) == sorted(["done " + repr(sorted(range(100))), "done []"])
