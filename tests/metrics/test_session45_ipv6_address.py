"""Session 45 (metrics trial): a dashboard address whose IPv6 host is not
in brackets, or a bracketed host with no port, is a malformed address
(ValueError; the CLI exits 2) naming what is wrong. `--dashboard ::1` was
read as host ':' port 1 and failed as a host that could not be found
(`error: dashboard [:]:1: unknown host`, exit 1), `'[::1]'` said its
port was `'1]'`, and `'[]:9464'` said `dashboard :9464: unknown host`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kernel import Dataflow, run
from kernel.metrics import parse_address

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", ["::1", "fe80::1", "2001:db8::1", "::1:9464", "[::1:9464", "::"])
def test_an_ipv6_host_out_of_brackets_is_refused_saying_so(value):
    with pytest.raises(ValueError) as raised:
        parse_address(value)
    assert str(raised.value) == (f"dashboard {value!r}: an IPv6 host goes in brackets, "
                                 "'[HOST]:PORT' (e.g. '[::1]:9464')")


def test_a_bracketed_host_without_a_port_says_no_port():
    with pytest.raises(ValueError, match=r"got '\[::1\]': no port$"):
        parse_address("[::1]")


def test_empty_brackets_are_no_host():
    with pytest.raises(ValueError, match=r"got '\[\]:9464': no host"):
        parse_address("[]:9464")


def test_addresses_that_were_right_are_read_as_before():
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address("[fe80::1%lo]:9464") == ("fe80::1%lo", 9464)
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("localhost:0") == ("localhost", 0)


def test_run_refuses_it_before_anything_runs():
    flow = Dataflow("ipv6")
    out = flow.from_iterable(range(3)).collect()
    with pytest.raises(ValueError, match="an IPv6 host goes in brackets"):
        run(flow, dashboard="::1")
    assert out.items == []


def test_the_command_line_exits_2_naming_the_address(tmp_path):
    (tmp_path / "pipeline.py").write_text(
        "from kernel import Dataflow\nflow = Dataflow('x')\nflow.from_iterable(range(3)).collect()\n")
    done = subprocess.run([sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"),
                           "--dashboard", "::1"], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines()[-1] == (
        "error: dashboard '::1': an IPv6 host goes in brackets, '[HOST]:PORT' (e.g. '[::1]:9464')"), done
