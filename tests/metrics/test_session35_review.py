"""Review of the dashboard's address and pages (each test here failed
before its fix; see the commit messages): the error a taken port raises
is the public name the README gives it; an IPv6 address is written in
brackets."""

from __future__ import annotations

import socket

import pytest

import kernel.metrics
from kernel import Dataflow, run


def _flow() -> Dataflow:
    flow = Dataflow("address")
    flow.from_iterable(range(3)).collect()
    return flow


# -- the error's name ----------------------------------------------------------------------------


def test_a_taken_port_raises_the_documented_public_error():
    """The README and run()'s docstring name `kernel.metrics.MetricsServerError`;
    only `kernel.metrics._server` had it (AttributeError)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(kernel.metrics.MetricsServerError) as raised:
            run(_flow(), dashboard=f"127.0.0.1:{port}")
    assert str(raised.value) == f"dashboard 127.0.0.1:{port}: cannot listen there: Address already in use"


# -- an IPv6 address -----------------------------------------------------------------------------


@pytest.mark.parametrize("cores", [1, 2])
def test_a_taken_ipv6_port_is_said_in_brackets(cores):
    """`dashboard="[::1]:PORT"` with the port taken: the error said
    `dashboard ::1:PORT`, an address that reads as host `::1:PORT` with no port."""
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(kernel.metrics.MetricsServerError) as raised:
            run(_flow(), cores=cores, dashboard=f"[::1]:{port}")
    assert str(raised.value) == f"dashboard [::1]:{port}: cannot listen there: Address already in use"
