"""A user's own `net.py`, `state.py`, `operators.py`, a `state/` folder left by
`--state-dir state/` and a `kernel_helpers/` package beside a pipeline do not
break the library: it imports only `kernel.*`, and `net`, `state`,
`operators` are aliases of `kernel.net`, `kernel.state`, `kernel.operators`.

Run from such a directory with the development (editable) install, and with
a wheel built from this checkout and installed in a fresh virtual
environment, on one and on two kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests._builds import build

ROOT = Path(__file__).resolve().parent.parent

# The user's own modules, named like the library's public aliases, and used
# by the pipeline: they must be the ones it gets.
USER_FILES = {
    "net.py": "def fetch(word):\n    return word.upper()\n",
    "state.py": "STATES = {'OR': 'Oregon'}\n",
    "operators.py": "def shout(word):\n    return word + '!'\n",
    "kernel_helpers/__init__.py": "",
    "kernel_helpers/words.py": "def split(line):\n    return line.split()\n",
    "pipeline.py": textwrap.dedent("""\
        import net
        import operators
        import state
        from kernel_helpers.words import split

        from kernel import Dataflow

        assert state.STATES == {"OR": "Oregon"}, "the user's state.py"

        flow = Dataflow("shadowed")
        (flow.from_iterable(["a b a", "c a b"])
             .flat_map(split)
             .map(net.fetch)
             .map(operators.shout)
             .key_by(lambda w: w)
             .count()
             .to_files("out"))
        """),
}


def user_directory(base: Path) -> Path:
    directory = base / "project"
    for name, text in USER_FILES.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def counts(directory: Path) -> dict:
    found = {}
    for part in sorted((directory / "out").glob("part-*.jsonl")):
        for line in part.read_text().splitlines():
            word, n = json.loads(line)
            found[word] = found.get(word, 0) + n
    return found


EXPECTED = {"A!": 3, "B!": 2, "C!": 1}


def run_pipeline(python: str, directory: Path, *options: str) -> None:
    done = subprocess.run([python, "-m", "kernel.run", "pipeline.py", *options], cwd=directory,
                          capture_output=True, text=True, timeout=60, env=_env_without_checkout())
    assert done.returncode == 0, done.stderr
    assert counts(directory) == EXPECTED


def _env_without_checkout() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # only what the interpreter's install provides
    return env


def runs_beside_the_users_modules(python: str, directory: Path) -> None:
    """One and two kernels, then twice with `--state-dir state/` (the second
    run finds the `state/` folder the first made, and resumes a finished flow)."""
    for options in ([], ["--cores", "2"], ["--state-dir", "state/"], ["--state-dir", "state/"],
                    ["--cores", "2", "--state-dir", "state2/"]):
        run_pipeline(python, directory, *options)
    assert (directory / "state" / "snapshots.sqlite").is_file()


def test_a_pipeline_runs_beside_a_users_net_state_operators_and_state_folder(tmp_path):
    runs_beside_the_users_modules(sys.executable, user_directory(tmp_path))


# Submodules through the public names are the kernel.* modules too (they
# were loaded a second time, with classes of their own: a window built from
# `operators.windows.Tumbling` was refused as no Tumbling), and work in a run.
SUBMODULES_PROBE = textwrap.dedent("""\
    from operators.windows import Tumbling as Windowed
    import net.shm
    import kernel.net.shm, kernel.operators.windows
    assert Windowed is kernel.operators.windows.Tumbling and net.shm is kernel.net.shm
    import importlib.util
    assert importlib.util.find_spec("operators.no_such_module") is None
    try:
        import state.no_such_module
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("a submodule that does not exist was imported")
    from kernel import Dataflow, run
    flow = Dataflow()
    out = (flow.from_iterable([("a", 0.5), ("a", 1.5)], timestamp=lambda e: e[1])
           .key_by(lambda e: e[0]).window(Windowed(1.0)).count().collect())
    run(flow)
    assert [n for _, _, n in out.items] == [1, 1], out.items
    """)


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory) -> str:
    """A fresh virtual environment with the wheel of this checkout installed.
    Its dependencies (uvloop, msgspec, aiohttp) come from this environment's
    site-packages through a path file, not from the checkout: the editable
    install's finder lives there as a .pth too, but a directory added by a
    path file has its own .pth files ignored."""
    base = tmp_path_factory.mktemp("wheel")
    # with this environment's setuptools (a dev dependency, the version
    # [build-system] asks for), not one pip installs afresh in isolation;
    # the backend pyproject.toml names, its PEP 517 hook called directly as
    # `pip wheel --no-build-isolation` calls it (the same wheel, without
    # pip's ~2 s of start-up and checks)
    wheel = build("wheel", ROOT, base / "dist")  # (tests/_builds.py: one build of the checkout at a time)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return python


def test_the_wheel_installs_kernel_and_the_three_aliases_only(wheel_python, tmp_path):
    probe = textwrap.dedent("""\
        import importlib.util, kernel, net, operators, state
        import kernel.net, kernel.operators, kernel.state
        assert net is kernel.net and operators is kernel.operators and state is kernel.state
        assert "site-packages" in kernel.__file__, kernel.__file__
        import os, site  # PEP 561: type checkers read the installed annotations
        assert os.path.isfile(os.path.join(os.path.dirname(kernel.__file__), "py.typed"))
        for alias in ("net", "operators", "state"):  # single files: a stub package each
            assert os.path.isfile(os.path.join(site.getsitepackages()[0], alias + "-stubs", "__init__.pyi"))
        assert importlib.util.find_spec("benches") is None, "benches must not be installed"
        """) + SUBMODULES_PROBE + "print(kernel.net.__file__)\n"
    done = subprocess.run([wheel_python, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=_env_without_checkout())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(os.path.join("site-packages", "kernel", "net", "__init__.py"))


def test_the_wheel_runs_a_pipeline_beside_a_users_modules(wheel_python, tmp_path):
    runs_beside_the_users_modules(wheel_python, user_directory(tmp_path))


def test_in_a_checkout_the_public_names_are_the_packages_themselves():
    """Run from the checkout, `import net` finds the folder before the alias:
    it must still be `kernel.net`, not a second copy with classes of its own."""
    probe = textwrap.dedent("""\
        import net, operators, state
        import kernel.net, kernel.operators, kernel.state
        assert net is kernel.net and operators is kernel.operators and state is kernel.state
        assert net.SpscRing is kernel.net.SpscRing and state.StateError is kernel.state.StateError
        from operators import Tumbling
        from kernel.dataflow._api import ops
        assert Tumbling is ops.Tumbling
        """) + SUBMODULES_PROBE
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_library_imports_its_packages_only_by_their_kernel_names():
    """No module of the library imports `net`, `state` or `operators` by the
    bare names a user's files can shadow."""
    import ast

    offenders = []
    for folder in ("kernel", "net", "state", "operators"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    if name.split(".")[0] in ("net", "state", "operators"):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert offenders == []
