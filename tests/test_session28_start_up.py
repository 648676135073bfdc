"""Start-up of the command lines: `import kernel`, a one-kernel run without a
state_dir and the system's client do not import what they do not use
(sqlite3: the state store and the coordinator's catalog; secrets, hence
hmac and hashlib: shared-memory segments' names; json: JSON log records;
multiprocessing.connection: a run's supervisor of several kernels;
msgspec: the codec between kernel processes, from_files, the topics'
directory; importlib.abc: the checkout's sub-package finder). Each is imported where
it is used, and works there.

Each check runs in a fresh interpreter, which says at its end which of the
watched modules it imported."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WATCHED = ["sqlite3", "secrets", "hmac", "hashlib", "json", "multiprocessing.connection", "importlib.abc",
           "tempfile", "aiohttp", "msgspec"]

NOOP = textwrap.dedent("""\
    from kernel import Dataflow

    flow = Dataflow("noop")
    flow.from_iterable(range(10)).sink(id)
    """)


def _imported(code: str, cwd: Path | None = None) -> tuple[list[str], str]:
    """Runs `code` in a fresh interpreter; the watched modules it imported
    (in WATCHED's order) and what it printed before."""
    tail = textwrap.dedent(f"""
        import sys as _sys
        print("IMPORTED", [_m for _m in {WATCHED!r} if _m in _sys.modules])
        """)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + tail], capture_output=True,
                          text=True, timeout=60, cwd=cwd or ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    out, _, last = done.stdout.rstrip("\n").rpartition("\n")
    assert last.startswith("IMPORTED "), done.stdout
    return ast.literal_eval(last[len("IMPORTED "):]), out


def test_import_kernel_imports_none_of_them():
    imported, _ = _imported("import kernel")
    assert imported == []


def test_a_one_kernel_noop_run_of_the_command_line_imports_none_of_them(tmp_path):
    (tmp_path / "noop.py").write_text(NOOP)
    imported, _ = _imported("""\
        import runpy, sys
        sys.argv = ["kernel.run", "noop.py"]
        try:
            runpy.run_module("kernel.run", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        """, cwd=tmp_path)
    assert imported == []


def test_a_run_with_a_state_dir_imports_sqlite3_then_and_keeps_its_state(tmp_path):
    imported, out = _imported(f"""\
        import sys
        from kernel import Dataflow, run

        def flow():
            f = Dataflow("counts")
            got = f.from_iterable("abcab").key_by(lambda w: w).count().collect()
            return f, got

        f, got = flow()
        before = "sqlite3" in sys.modules
        run(f, state_dir={str(tmp_path / "state")!r})
        print(before, sorted(got.items))
        """)
    assert out == "False [('a', 2), ('b', 2), ('c', 1)]"
    # (the flow's fingerprint is a sha256; the store's run records are JSON)
    assert imported == ["sqlite3", "hashlib", "json"]
    assert (tmp_path / "state").is_dir() and any((tmp_path / "state").iterdir())


def test_two_kernels_work_and_their_segments_get_names(tmp_path):
    # --cores 2: the supervisor waits on its kernels (multiprocessing.connection)
    # and the kernels exchange through named shared-memory segments (secrets)
    (tmp_path / "pipe.py").write_text(textwrap.dedent("""\
        from kernel import Dataflow

        flow = Dataflow("sum")
        total = flow.from_iterable(range(1000)).key_by(lambda n: n % 7).sum().collect()
        """))
    done = subprocess.run([sys.executable, "-m", "kernel.run", "pipe.py", "--cores", "2"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    imported, out = _imported("""\
        import sys
        from kernel.net import shm
        before = "secrets" in sys.modules
        name = shm._new_name("t")
        print(before, name.startswith(f"t-{__import__('os').getpid()}-"), len(name.rsplit("-", 1)[1]))
        """)
    assert out == "False True 12"
    assert imported == ["secrets", "hmac", "hashlib"]


def test_the_systems_client_does_not_import_sqlite3_and_the_coordinators_catalog_works(tmp_path):
    imported, _ = _imported("import kernel.system._client")
    assert "sqlite3" not in imported
    imported, out = _imported(f"""\
        from kernel.system._catalog import Catalog
        catalog = Catalog({str(tmp_path)!r})
        try:
            catalog.add_pipeline("h", "p.py", b"x")
            print(catalog.pipeline("h"))
        finally:
            catalog.close()
        """)
    assert out == "('p.py', b'x')"
    assert "sqlite3" in imported


def test_json_log_lines_still_format():
    imported, out = _imported("""\
        import sys
        from kernel._logging import json_line
        before = "json" in sys.modules
        print(before, json_line("WARNING", "late \\"x\\"", created=0.25, step="map", kernel=None))
        """)
    assert out == ('False {"time": "1970-01-01T00:00:00.250Z", "level": "WARNING", '
                   '"message": "late \\"x\\"", "step": "map"}')
    assert imported == ["json"]
