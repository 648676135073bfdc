"""A new user's first hour, from a wheel installed in a fresh environment
(`pip install .`), following the README: what they met that the suite did
not catch.

- the README's first line, `pip install . && python -m kernel.run
  examples/wordcount.py` in the checkout, failed: `ModuleNotFoundError: No
  module named 'kernel.net'`. Run there, `kernel` is the checkout's folder
  (the current directory comes first on sys.path), whose `net`, `operators`
  and `state` are its siblings (pyproject.toml's package-dir), which only
  the editable install's finder (CI's, every test's) maps;
- the system's client commands (`status`, `status --json`, `logs`,
  `submit --wait`) piped into `head` ended in a `BrokenPipeError`
  traceback (exit 1) once the reader went away, where `python -m
  kernel.run p.py | head -1` ends quietly with 141, as `yes | head -1`;
- `dir(kernel)` (a REPL's completion, `kernel.<TAB>`) listed none of the
  names `from kernel import Dataflow, run` gives: `kernel`, `kernel.system`
  and `kernel.net` load them lazily (a module `__getattr__`) without the
  `__dir__` that goes with it (PEP 562);
- a client command with a wrong secret said only `error: authentication
  failed with process 0 at http://...: wrong or missing secret`: the
  cluster's words ("process 0") and nothing of what to do, where the
  executor's says to start it with the system's KERNEL_SECRET or
  --secret-file;
- a client command or an executor without KERNEL_COORDINATOR said
  `error: --coordinator: no address given (HOST:PORT)`, where one without
  a secret says `set KERNEL_SECRET or use --secret-file`;
- a job that can never fit was refused with `the job needs 1 executor(s)
  with 4 core(s) each; the system has 0`, which reads as no executors at
  all on a system with one of 2 cores: it names the executors and their
  cores now;
- `window()`, `count()`, `map_values()`... on a stream not keyed raised
  Python's bare `'Stream' object has no attribute 'window'`, where
  `join` says `join needs a keyed stream (key_by first)`."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "system"))

from _system import System, wait_until

PIPELINE = """\
from kernel import Dataflow

flow = Dataflow("lines")
flow.from_iterable(range(2000)).map(lambda n: f"line {n} " + "x" * 60).print()
"""


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    root = tmp_path_factory.mktemp("system")
    (root / "lines.py").write_text(PIPELINE)
    system = System(root)
    try:
        system.start_coordinator()
        system.start_executor(1)
        system.executors_up(1)
        done = system.cli("submit", "lines.py", "--cores", "1", "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        yield system
    finally:
        system.close()


def cli_into_a_closed_pipe(system: System, *args: str) -> tuple[int, str]:
    """The command with its stdout a pipe whose reader has gone (`| head -1`
    that had what it wanted before the command wrote)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "kernel", *args], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=60, env=system.env, cwd=system.root)
    finally:
        os.close(write)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["logs", "job-1"],
                                  ["submit", "lines.py", "--cores", "1", "--wait"]],
                         ids=["status", "status-json", "logs", "submit-wait"])
def test_a_client_command_whose_reader_went_away_ends_quietly_with_141(system, args):
    code, err = cli_into_a_closed_pipe(system, *args)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code == 141, (code, err)
    if args[0] == "submit":  # the job was submitted all the same, and runs to its end
        wait_until(lambda: all(j["status"] == "completed" for j in system.status()["jobs"]),
                   what="the jobs to complete")
        assert len(system.status()["jobs"]) == 2


def test_dir_of_a_package_with_lazy_names_lists_them_before_they_are_loaded():
    probe = """\
import importlib, sys
for name in ("kernel", "kernel.system", "kernel.net"):
    module = importlib.import_module(name)
    missing = sorted(set(module.__all__) - set(dir(module)))
    assert not missing, (name, missing)
    assert "__getattr__" in dir(module) and "__name__" in dir(module)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_client_command_with_a_wrong_secret_says_what_to_do(system):
    wrong = system.cli("status", env=dict(system.env, KERNEL_SECRET="not-the-secret"))
    assert wrong.returncode == 1, wrong.stderr
    assert wrong.stderr == (
        f"error: the coordinator at {system.host}:{system.port} refused this command's secret "
        "(authentication failed: wrong or missing secret): run it with the system's KERNEL_SECRET "
        "or --secret-file\n")


def test_a_command_without_a_coordinator_says_to_set_kernel_coordinator(tmp_path):
    args = ["status"]  # (an executor's is the same code)
    env = {k: v for k, v in os.environ.items() if k != "KERNEL_COORDINATOR"}
    done = subprocess.run([sys.executable, "-m", "kernel", *args], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env=dict(env, KERNEL_SECRET="s"))
    assert (done.returncode, done.stderr) == (
        2, "error: no coordinator given: set KERNEL_COORDINATOR or use --coordinator HOST:PORT\n")


def test_a_job_that_can_never_fit_is_refused_naming_the_executors_cores(system):
    done = system.cli("submit", "lines.py", "--cores", "4")
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == ("error: the job needs 1 executor(s) with 4 core(s) each; the system has 0 "
                           "(its executors: e1 with 1 core(s))\n")


@pytest.mark.parametrize("method", ["window", "count", "sum", "reduce", "fold", "map_values", "stateful_map"])
def test_a_keyed_streams_method_on_a_stream_not_keyed_says_key_by_first(method):
    from kernel import Dataflow

    stream = Dataflow().from_iterable([1, 2])
    with pytest.raises(AttributeError) as raised:
        getattr(stream, method)
    assert str(raised.value) == (f"'Stream' object has no attribute '{method}': {method}() is for a keyed "
                                 "stream (key_by first)")
    with pytest.raises(AttributeError) as raised:
        stream.no_such_method  # noqa: B018
    assert str(raised.value) == "'Stream' object has no attribute 'no_such_method'"
    assert not hasattr(stream, method) and hasattr(stream.key_by(str), method)


def test_a_propertys_own_attribute_error_is_not_replaced_by_the_keyed_stream_hint():
    # (Stream.__getattr__ above runs after a property raised AttributeError
    # too: it replaced `late`'s own word with a bare "no attribute 'late'")
    from kernel import Dataflow
    from operators import Tumbling

    counts = (Dataflow().from_iterable([("a", 1.0)], timestamp=lambda e: e[1]).key_by(lambda e: e[0])
              .window(Tumbling(1.0)).count())
    with pytest.raises(AttributeError) as raised:
        counts.late  # noqa: B018
    assert str(raised.value) == ("late events are dropped (and counted): ask for them with "
                                 "window(w, late=True)")


ROOT = Path(__file__).resolve().parent.parent

# The library imported from the checkout with no editable install's finder
# (as with `pip install .`: its finder is a .pth file, which a folder put on
# sys.path by hand does not run); this environment's site-packages gives the
# dependencies (msgspec, uvloop, aiohttp).
FROM_THE_CHECKOUT = """\
import runpy, sys
sys.path.append(sys.argv.pop())
assert not any("editable" in type(f).__module__ for f in sys.meta_path), sys.meta_path
import kernel, net
import kernel.net, kernel.operators.windows, kernel.state
assert kernel.__file__ == "kernel/__init__.py" or kernel.__file__.endswith("/kernel/__init__.py")
assert net is kernel.net and kernel.net.__file__.endswith("/net/__init__.py"), kernel.net.__file__
sys.argv = ["kernel.run", "examples/wordcount.py"]
runpy.run_module("kernel.run", run_name="__main__", alter_sys=True)
"""


def test_the_readmes_first_line_runs_the_example_in_the_checkout_without_an_editable_install():
    done = subprocess.run([sys.executable, "-S", "-c", FROM_THE_CHECKOUT, sysconfig.get_paths()["purelib"]],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # the same counts as the editable install's run of it (as CI's)
    editable = subprocess.run([sys.executable, "-m", "kernel.run", "examples/wordcount.py"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert editable.returncode == 0, editable.stderr
    assert done.stdout == editable.stdout and "the 6\n" in done.stdout
