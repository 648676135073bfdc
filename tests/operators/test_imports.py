"""The operator library imports on its own, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "code",
    [
        "import operators; print(operators.Map.__name__)",
        "from operators import Count, Map; print(Map.__name__)",
        "import kernel, operators; print(operators.Map.__name__)",
    ],
)
def test_operators_import_first_in_a_fresh_interpreter(code):
    # `operators` builds on `kernel`; importing it first must not trip over the
    # kernel facade importing `operators` back (a circular import).
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Map\n"


@pytest.mark.parametrize("package", ["operators", "kernel.operators"])
def test_the_connectors_module_holds_the_same_classes_as_the_package(package):
    code = (f"import {package}.connectors as c, kernel.operators as o; "
            "names = ['FileSource', 'PartitionSource', 'RedisEntry', 'RedisStreamSource', 'ToFiles', "
            "'ToRedisStream']; assert sorted(c.__all__) == names; "
            "assert all(getattr(c, n) is getattr(o, n) for n in names); print('Map')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Map\n"
