"""Building this checkout's wheel or sdist in a test, with the backend
pyproject.toml names, its PEP 517 hook called directly (as `pip wheel
--no-build-isolation` does: no network, this environment's setuptools),
one build of a source directory at a time."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_BUILD = """\
import importlib, sys, tomllib
with open("pyproject.toml", "rb") as f:
    backend = importlib.import_module(tomllib.load(f)["build-system"]["build-backend"])
print(getattr(backend, "build_" + sys.argv[1])(sys.argv[2]))
"""


def build(what: str, source: Path, out: Path) -> Path:
    """`what` ("wheel" or "sdist") of `source` built into `out`; its path.
    Under a lock of `source`: setuptools builds in the source's build/ and
    *.egg-info, and two workers' builds of the checkout at once collided
    there (CI: "returned non-zero exit status 1" in one of them)."""
    key = hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"streamkernel-build-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # (released when closed)
        # setuptools copies into build/lib and never removes what the source
        # no longer has: a build/ left by one run put a module since moved
        # into the next session's wheel of the checkout (kernel/_host_port.py,
        # which the sdist's wheel lacks), so a build/ this makes goes again
        made = Path(source, "build")
        ours = not made.exists()
        try:
            done = subprocess.run([sys.executable, "-c", _BUILD, what, str(out)], cwd=source,
                                  capture_output=True, text=True, timeout=300)
        finally:
            if ours:
                shutil.rmtree(made, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    return out / done.stdout.split()[-1]
