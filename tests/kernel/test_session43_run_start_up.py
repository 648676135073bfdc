"""Session 43: `python -m kernel.run` checks its command line before it
imports what it would run with. `--help` and a usage error (a missing
pipeline file, a bad option) imported the fluent API and the run's
machinery first (kernel._facade, asyncio: ~0.3 s of CPU against Python's
~0.03 s), and `--heartbeat 0.01` with `--peers` imported aiohttp (~0.7 s)
before it said the heartbeat was too short. A plain one-process run imports
the API (the pipeline file does) but not aiohttp: it uses no network.

Each case runs `python -m kernel.run` (runpy, as `-m` does) in a process
that then says, last on stderr, which heavy modules it had imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("aiohttp", "asyncio", "kernel._facade", "kernel.dataflow._api")
_DRIVER = f"""
import runpy, sys
sys.argv[0] = sys.argv.pop(1)  # the module: kernel.run, or kernel (`python -m kernel run`)
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
print("imported:", [m for m in {HEAVY!r} if m in sys.modules], "exit:", code, file=sys.stderr)
"""

TINY = """\
from kernel import Dataflow

flow = Dataflow("tiny")
flow.from_iterable(range(10)).map(lambda n: n + 1).sink(id)
"""


def _run(tmp_path, module: str, *args: str) -> tuple[list[str], str]:
    """The lines `python -m MODULE ARGS` wrote on stderr (in tmp_path, which
    holds tiny.py), and its last: the heavy modules imported, its exit."""
    (tmp_path / "tiny.py").write_text(TINY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
    done = subprocess.run([sys.executable, "-c", _DRIVER, module, *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    *said, last = done.stderr.splitlines()
    return said, last


@pytest.mark.parametrize(("args", "said"), [
    (["missing.py"], "error: pipeline file not found: missing.py"),
    ([".", "--quiet"], "error: . is a directory"),
    (["tiny.py", "--cores", "x"], "argument --cores: invalid int value: 'x'"),
    (["tiny.py", "--cores", "0"], "error: cores must be a positive int, got 0"),
    (["tiny.py", "--startup-timeout", "-1"], "error: startup_timeout must be a positive number of seconds"),
    (["tiny.py", "--epoch-interval", "1"], "error: --epoch-interval needs --state-dir"),
    (["tiny.py", "--state-dir", "s", "--epoch-interval", "nan"], "error: epoch_interval must be a positive"),
    (["tiny.py", "--process-id", "0", "--peers", "127.0.0.1:1", "--heartbeat", "0.01"],
     "error: heartbeat must be a positive number of seconds, at least 0.1"),
    (["tiny.py", "--process-id", "0", "--peers", "127.0.0.1:1", "--tls-cert", "c.pem"],
     "error: --tls-cert and --tls-key go together"),
    (["tiny.py", "--coordinator", "nohost"], "error: --coordinator must be HOST:PORT, got 'nohost'"),
])
def test_a_usage_error_is_said_before_the_api_and_the_links_are_imported(tmp_path, args, said):
    lines, last = _run(tmp_path, "kernel.run", *args)
    assert said in "\n".join(lines)
    assert last == "imported: [] exit: 2", lines


@pytest.mark.parametrize("module", ["kernel.run", "kernel"])
def test_help_imports_neither_the_api_nor_the_event_loop(tmp_path, module):
    args = ["--help"] if module == "kernel.run" else ["run", "--help"]
    lines, last = _run(tmp_path, module, *args)
    assert last == "imported: [] exit: 0", lines


def test_a_plain_run_imports_the_api_and_not_aiohttp(tmp_path):
    lines, last = _run(tmp_path, "kernel.run", "tiny.py")
    assert last == "imported: ['asyncio', 'kernel._facade', 'kernel.dataflow._api'] exit: 0", lines


def test_the_run_module_still_gives_the_function_and_the_command_line():
    # `run` and `main` are now looked up when asked for (PEP 562): the same objects as before
    code = textwrap.dedent("""\
        import sys
        import kernel.run
        from kernel.run import run
        import kernel._facade, kernel.cli._run
        assert run is kernel._facade.run and kernel.run.main is kernel.cli._run.main
        try:
            kernel.run.nothing
        except AttributeError as exc:
            print(exc)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    said = "module 'kernel.run' has no attribute 'nothing'\n"
    assert (done.returncode, done.stdout) == (0, said), done.stderr


@pytest.mark.parametrize("interval", ["0", "nan"])
def test_submit_says_a_bad_epoch_interval_before_it_imports_the_api(tmp_path, interval):
    """`python -m kernel submit --epoch-interval` checked it with the
    facade's check_epoch_interval: its usage error imported the fluent API
    and the run's machinery (kernel._facade) to say it. It is checked with
    the run's options' own module now. (The client module that checks it
    brings asyncio and aiohttp still: not this test's matter.)"""
    (tmp_path / "secret").write_text("s")
    lines, last = _run(tmp_path, "kernel", "submit", "tiny.py", "--state-dir", "s", "--epoch-interval",
                       interval, "--coordinator", "127.0.0.1:1", "--secret-file", "secret")
    said = f"error: epoch_interval must be a positive number of seconds, got {float(interval)!r}"
    assert said in "\n".join(lines), lines
    assert last.endswith(" exit: 2"), last
    assert "kernel._facade" not in last and "kernel.dataflow._api" not in last, last
