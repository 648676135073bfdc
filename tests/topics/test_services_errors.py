"""A services call that cannot start (no secret, no coordinator, an address
that is not HOST:PORT) raises the service's own error, `ServiceError`,
which is a `TopicError` too (as the README's topics section says)."""

from __future__ import annotations

import asyncio

import pytest

import kernel.services
from kernel.topics import ServiceError, TopicError


@pytest.mark.parametrize("case, expected", [
    ("no secret", "topics and services need the shared secret: set KERNEL_SECRET"),
    ("no coordinator", "topics and services need a coordinator, and none is known"),
    ("not host:port", "coordinator address 'nowhere' is not HOST:PORT"),
])
def test_a_call_that_cannot_start_is_a_service_error(case, expected, monkeypatch):
    monkeypatch.setenv("KERNEL_SECRET", "s3cret")
    monkeypatch.delenv("KERNEL_COORDINATOR", raising=False)
    coordinator = {"no secret": "127.0.0.1:9", "no coordinator": None, "not host:port": "nowhere"}[case]
    if case == "no secret":
        monkeypatch.delenv("KERNEL_SECRET")
    with pytest.raises(ServiceError, match=f"^service 'config': {expected}") as raised:
        kernel.services.call("config", "x", coordinator=coordinator, timeout=1)
    assert isinstance(raised.value, TopicError)  # caught as before

    async def connecting():
        async with kernel.services.connect("config", coordinator=coordinator, timeout=1):
            pass

    with pytest.raises(ServiceError, match=f"^service 'config': {expected}"):
        asyncio.run(connecting())
