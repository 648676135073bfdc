"""A review of the start-up work (modules imported where used: json, sqlite3,
msgspec...): what it broke.

- a run on several kernels forks them, and a module this process had not
  imported is imported by each kernel after the fork: to_files's json (its
  encoder, made by the first batch). A thread of the application that was
  importing json at the fork (a one-kernel to_files run of its own, a JSON
  log line) holds json's import lock in the children too, where no thread
  ever releases it: the kernels hung on their first batch, and the run with
  them. Before the start-up work every process had json from `import
  kernel`. The same held for the epochs' kernel side
  (kernel.runtime._coordinate), which each kernel of a run with a
  state_dir imported after the fork, and the launcher after it (a second
  run with a state_dir on another thread of the application, its launcher
  importing it at the fork, hung the first one's kernels).

Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FLOW = """\
    from kernel import Dataflow, run

    STATE = {"state_dir": OUT + "-state"} if HELD == "kernel.runtime._coordinate" else {}

    flow = Dataflow("numbers")
    flow.from_iterable(range(100)).key_by(lambda n: n % 7).map(lambda kv: kv[1]).to_files(OUT)
    """


def _python(before: str, after: str, tmp_path: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs `before`, FLOW, then `after` in a fresh interpreter."""
    code = "".join(textwrap.dedent(part) for part in (before, FLOW, after))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _written(directory: Path) -> list:
    return sorted(json.loads(line) for part in sorted(directory.glob("part-*.jsonl"))
                  for line in part.read_text().splitlines())


@pytest.mark.parametrize("held", ["json", "kernel.runtime._coordinate"])
def test_a_thread_importing_at_the_fork_what_the_kernels_import_does_not_hang_the_run(tmp_path, held):
    # The thread's import of `held` is held (inside its own import lock, as
    # a slow import is) until the main thread waits on that lock (importlib
    # says so: `_blocking_on`), or for 8 s at most. Before the fix the main
    # thread forked the kernels meanwhile, which waited for ever.
    code = f"""\
        import importlib._bootstrap, importlib.machinery, sys, threading, time

        OUT, HELD = {str(tmp_path / "out")!r}, {held!r}
        holding = threading.Event()
        MAIN = threading.main_thread().ident

        def main_waits_on_it():
            waits = importlib._bootstrap._blocking_on.get(MAIN)
            return any(getattr(lock, "name", None) == HELD
                       for lock in (waits if isinstance(waits, list) else [waits]))

        class Held:  # HELD's loader, which waits before running it
            def find_spec(self, name, path=None, target=None):
                if name != HELD or threading.current_thread().name != "importer":
                    return None
                spec = importlib.machinery.PathFinder.find_spec(name, path)
                real = spec.loader

                class Loader:
                    def create_module(self, spec):
                        return None

                    def exec_module(self, module):
                        holding.set()
                        until = time.monotonic() + 8
                        while not main_waits_on_it() and time.monotonic() < until:
                            time.sleep(0.005)
                        real.exec_module(module)

                spec.loader = Loader()
                return spec

        sys.meta_path.insert(0, Held())
        importer = threading.Thread(target=__import__, args=(HELD,), name="importer", daemon=True)
        importer.start()
        assert holding.wait(10), f"{{HELD}} was imported already: nothing to hold"
        """
    after = """\
        started = time.monotonic()
        run(flow, cores=2, **STATE)
        print(round(time.monotonic() - started) < 8)
        """
    try:
        done = _python(code, after, tmp_path, timeout=25)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the run on two kernels hung on {held}'s import lock") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\n"
    assert _written(tmp_path / "out") == list(range(100))


@pytest.mark.parametrize("held", ["json", "kernel.runtime._coordinate"])
def test_the_kernels_of_a_to_files_run_import_nothing_after_the_fork(tmp_path, held):
    # (an audit hook: "import" is raised for each module actually loaded,
    # in whichever process loads it; `held` here only picks the flow: the
    # one with a state_dir for the epochs' module)
    code = f"""\
        import os, sys

        OUT, HELD = "out", {held!r}
        PARENT = os.getpid()

        def hook(event, args):
            if event == "import" and os.getpid() != PARENT:
                os.write(1, f"kernel imports {{args[0]}}\\n".encode())

        sys.addaudithook(hook)
        """
    done = _python(code, 'run(flow, cores=2, **STATE)\nprint("done")\n', tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert _written(tmp_path / "out") == list(range(100))
