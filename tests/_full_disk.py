"""Filling a (small, tmpfs) file system in a test."""

from __future__ import annotations

import errno

import pytest


def fill(directory) -> None:
    """Writes a file into `directory` until its file system is full."""
    with open(directory / "filler", "wb", buffering=0) as f:
        with pytest.raises(OSError) as info:
            while True:
                f.write(b"x" * 4096)
        assert info.value.errno == errno.ENOSPC
