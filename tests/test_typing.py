"""The fluent API's types, as a user's type checker sees them.

`mypy --strict` checks two files in tests/typecheck/ against the package laid
out as a wheel installs it (pyproject's package-dir: `operators/` becomes
`kernel/operators/`...), found as an installed package is, so it must carry
its `py.typed` marker, and its own modules' errors are not the user's:

- `ok_flow.py` must check clean: a `--strict` user's pipeline gets no
  `Any` from the API (`Collected.items` is a `list[T]`, not a `list`), and
  its `assert_type`s pin each method's result type;
- every line of `bad_flow.py` marked `# E: text` must be reported with an
  error containing `text`, and no other line may be;
- kernel/dataflow/_api.py itself checks clean (its annotations agree with
  its code), and ok_flow's flows, run, emit what its types claim.

`--strict` because a user who type-checks can ask for it, and the API must
not fail them there: a call to an API function left unannotated is an error
under --strict (`Dataflow("x")` with an untyped `__init__`: "Call to untyped
function"), where a lax run says nothing. A result that is `Any` would pass
every check after it; the `assert_type`s catch those.

mypy starts cold (its cache in a fresh temporary folder, shared by the two
runs): a few seconds, most of it reading the standard library's stubs.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "typecheck"
MYPY_SECONDS = 60  # a cold run takes a few seconds; this only bounds a hung one


def installed_layout(base: Path) -> Path:
    """The checkout as a wheel installs it, made of symbolic links: the folders
    that pyproject.toml's [tool.setuptools.package-dir] maps under `kernel`
    (net/, operators/, state/) become its sub-packages, and the alias modules
    sit at the top with their stub packages. A type checker cannot follow the editable install's
    import hook, so this is how it finds `kernel.operators` from a checkout."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = setuptools["package-dir"]
    site = base / "site"
    top = site / "kernel"
    top.mkdir(parents=True)
    nested = {name.removeprefix("kernel."): ROOT / folder
              for name, folder in folders.items() if name.startswith("kernel.")}
    for entry in (ROOT / folders["kernel"]).iterdir():
        if entry.name not in nested and entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for name, folder in nested.items():
        (top / name).symlink_to(folder)
    for module in setuptools.get("py-modules", ()):
        (site / f"{module}.py").symlink_to(ROOT / folders[""] / f"{module}.py")
    for package in setuptools["packages"]:  # the aliases' stub packages
        if package.split(".")[0] != "kernel":
            (site / package).symlink_to(ROOT / folders[""] / package)
    return site


def mypy(site: Path, cache: Path, *files: Path) -> tuple[list[str], float]:
    """mypy's error lines for `files`, and how long it ran. `site` is put on
    the PYTHONPATH of the interpreter mypy asks for its search path, so its
    packages count as installed (site-packages) ones."""
    return _mypy({"PYTHONPATH": str(site)}, cache, "--python-executable", sys.executable, *map(str, files))


def _mypy(paths: dict[str, str], cache: Path, *arguments: str) -> tuple[list[str], float]:
    """`paths`: PYTHONPATH or MYPYPATH, the only ones mypy gets."""
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "MYPYPATH")}
    env.update(paths)
    command = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), "--no-error-summary",
               "--show-absolute-path", "--hide-error-context", "--no-pretty", *arguments]
    start = time.monotonic()
    # cwd: not the checkout, whose `kernel/` (without operators/) mypy would find first
    done = subprocess.run(command, cwd=cache.parent, env=env, capture_output=True, text=True,
                          timeout=MYPY_SECONDS)
    elapsed = time.monotonic() - start
    # (not installed: it is in the dev extra, pip install -e '.[dev]')
    assert done.returncode in (0, 1), f"mypy failed to run:\n{done.stdout}\n{done.stderr}"
    return [line for line in done.stdout.splitlines() if ": error: " in line], elapsed


ERROR = re.compile(r"^(?P<path>.+?):(?P<line>\d+): error: (?P<message>.*)$")
MARK = re.compile(r"#\s*E:\s*(?P<text>.+?)\s*$")


def errors_by_line(lines: list[str], path: Path) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for line in lines:
        match = ERROR.match(line)
        assert match, f"unexpected mypy output: {line}"
        assert Path(match["path"]) == path, f"an error outside {path.name}: {line}"
        found.setdefault(int(match["line"]), []).append(match["message"])
    return found


def marked_lines(path: Path) -> dict[int, str]:
    return {number: match["text"] for number, line in enumerate(path.read_text().splitlines(), 1)
            if (match := MARK.search(line))}


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> tuple[Path, Path]:
    """The installed layout, and a mypy cache the runs share (the standard
    library's part of it, read once)."""
    base = tmp_path_factory.mktemp("typing")
    return installed_layout(base), base / "mypy_cache"


def once_per_session(config, tmp_path_factory, name: str, compute):
    """`compute()`, a JSON value, once per test session: under pytest-xdist
    the workers of one session share it (a file in the session's base
    temporary folder, written under a lock by the first to come; the
    others wait for it), else computed here. The two tests reading
    `reports` ran on two workers, and each ran its own cold mypy."""
    if not hasattr(config, "workerinput"):  # (set on an xdist worker only)
        return compute()
    shared = tmp_path_factory.getbasetemp().parent  # the session's: its workers' folders are in it
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # (released when closed)
        done = shared / f"{name}.json"
        if done.exists():
            return json.loads(done.read_text())
        value = compute()
        written = shared / f"{name}.json.part"
        written.write_text(json.dumps(value))
        written.replace(done)
        return value


@pytest.fixture(scope="module")
def reports(layout, pytestconfig, tmp_path_factory) -> dict[Path, list[str]]:
    """One mypy run over both files (they share its start-up and the stdlib),
    one per test session (`once_per_session`)."""
    site, cache = layout
    ok, bad = CASES / "ok_flow.py", CASES / "bad_flow.py"

    def run_mypy() -> list[str]:
        lines, elapsed = mypy(site, cache, ok, bad)
        print(f"mypy --strict, cold cache: {elapsed:.1f} s")
        return lines

    lines = once_per_session(pytestconfig, tmp_path_factory, "test_typing-reports", run_mypy)
    by_file: dict[Path, list[str]] = {ok: [], bad: []}
    for line in lines:
        path = Path(line.partition(":")[0])
        assert path in by_file, f"an error outside the two files: {line}"
        by_file[path].append(line)
    return by_file


def test_a_typed_pipeline_checks_clean_under_strict(reports):
    assert reports[CASES / "ok_flow.py"] == []


def test_every_marked_mistake_is_reported_and_nothing_else(reports):
    path = CASES / "bad_flow.py"
    found = errors_by_line(reports[path], path)
    expected = marked_lines(path)
    assert len(expected) >= 15, "the marks were not read"
    missed = {n: text for n, text in expected.items()
              if not any(text in message for message in found.get(n, []))}
    assert not missed, "\n".join(f"line {n}: expected {text!r}, mypy said {found.get(n, [])}"
                                 for n, text in sorted(missed.items()))
    unmarked = {n: messages for n, messages in found.items() if n not in expected}
    assert not unmarked, f"errors on lines not marked: {unmarked}"


def test_the_api_module_checks_clean_under_strict(layout):
    """The annotations agree with the code under them (a method declared to
    give a `KeyedStream[K, int]` builds one). Only this module is checked:
    the modules it imports are read for their types, their errors left out."""
    site, cache = layout
    paths = {"MYPYPATH": str(site)}  # as source, not as an installed package
    lines, _ = _mypy(paths, cache, "--follow-imports=silent", "-p", "kernel.dataflow._api")
    assert lines == []


def test_the_types_ok_flow_claims_are_what_its_flows_emit():
    """ok_flow's assert_types are checked statically; here its flows run, and
    their records are compared with plain-Python references, element types
    included (a Window where it claims one, an int where it claims int)."""
    spec = importlib.util.spec_from_file_location("ok_flow", CASES / "ok_flow.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = module.run_all()
    events = module.EVENTS

    counts, lengths = found["words"]
    text = "to be or not to be".split()
    assert sorted(counts) == sorted((w, text.count(w)) for w in set(text))
    assert lengths == [str(len(w)) for w in text if len(w) > 2]

    per_user: dict[str, list[int]] = {}
    for user, _, amount in events:
        per_user.setdefault(user, []).append(amount)
    aggregates = found["aggregates"]
    assert sorted(aggregates["sum"]) == sorted((u, sum(v)) for u, v in per_user.items())
    assert sorted(aggregates["max"]) == sorted((u, max(v)) for u, v in per_user.items())
    assert sorted(aggregates["list"]) == sorted(per_user.items())
    assert sorted(aggregates["digits"]) == sorted((u, "".join(map(str, v))) for u, v in per_user.items())
    assert aggregates["labels"] == [f"{u}={a}" for u, _, a in events]

    windows = found["windows"]
    # Tumbling(1.0), one event a batch: ("bob", 0.2) comes after ("ann", 1.3)
    # moved the watermark past [0, 1), so it is late, on the late stream
    in_time, late = events[:-1], events[-1:]
    by_window: dict[tuple[str, float], list[int]] = {}
    for user, t, amount in in_time:
        by_window.setdefault((user, float(int(t))), []).append(amount)
    assert sorted((k, w.start, w.end, n) for k, w, n in windows["counts"]) == sorted(
        (k, start, start + 1.0, len(v)) for (k, start), v in by_window.items())
    assert all(type(w) is module.Window for _, w, _ in windows["counts"])
    assert sorted(windows["starts"]) == sorted((k, s, sum(v)) for (k, s), v in by_window.items())
    assert windows["late"] == [(user, amount) for user, _, amount in late]

    assert found["joins"] == [("ann", module.Window(0.0, 1.0), ("click", 0.7))]

    stateful = found["stateful"]  # EVENTS: ann 4, bob 1, ann 2, ann 5, bob 7 (one batch)
    assert stateful["totals"] == [("ann", 4), ("bob", 1), ("ann", 6), ("ann", 11), ("bob", 8)]
    assert stateful["running"] == [("ann", 3), ("bob", 2)]
    assert sorted(stateful["pairs"]) == sorted((u, (a, t)) for u, ta, a in events for v, t, _ in events
                                               if u == v and abs(ta - t) <= 1.0)
    assert stateful["users"] == ["ann", "bob"]
    assert sorted((k, w.start, best) for k, w, best in stateful["top"]) == [
        ("ann", 0.0, [4]), ("ann", 1.0, [5]), ("bob", 0.0, [7])]
    assert stateful["distinct"] == [(u, a) for u, _, a in events]

    sources = found["sources"]
    assert sorted(sources["parts"]) == sorted([*range(6), 6, 4, 2])
    assert sorted(sources["scaled"]) == [3.0, 6.0, 9.0]
    stamps = [r for r in sources["mixed"] if not isinstance(r, int)]
    assert [s.timestamp() for s in stamps] == [0.0, 1.0, 2.0]
    assert sources["stamps"] == stamps
