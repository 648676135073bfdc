"""Session 43: a subscriber whose TLS does not go with its publisher's (the
publisher's certificate not signed by the subscriber's CA; a publisher
that answers without TLS) took the failed handshake for a publisher gone
("nothing listens there"): it waited for the topic to be published again,
or ended with PublisherLost. No retry mends a configuration: it ends now
with a TopicError naming the publisher's address and the TLS cause.

Real processes and sockets: a coordinator over TLS (tests/system's
System, the CA's certificates), a registration made here for a
"publisher" served here (TLS with a certificate no CA signed, or plain
HTTP), and a subscribing app of its own with KERNEL_TLS."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import System
from test_system_tls import certificates, node_options  # noqa: F401  (a fixture: the CA and certificates)

from kernel.topics._directory import Directory

SUBSCRIBER = """import sys
from kernel import Dataflow, run
flow = Dataflow("subscriber")
flow.subscribe("numbers", timeout=20, on_lost=sys.argv[2]).collect()
run(flow, coordinator=sys.argv[1])
"""


async def answer_in_plain_http(reader, writer):
    await reader.read(1)  # (the TLS ClientHello: answered as a plain HTTP server would)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


async def say_nothing(reader, writer):
    await reader.read()  # (the TLS layer answers; the client gives up on the certificate)
    writer.close()


def untrusted(certificates) -> ssl.SSLContext:  # noqa: F811
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates["other.pem"], certificates["other.key"])
    return context


@pytest.mark.parametrize(("served", "cause", "on_lost"), [
    ("untrusted", "presented a TLS certificate that does not verify", "fail"),
    ("untrusted", "presented a TLS certificate that does not verify", "wait"),  # (it waited for ever)
    ("plain", "answered without TLS", "fail"),
])
async def test_a_subscriber_whose_tls_fails_with_its_publisher_says_so_at_once(
        certificates, tmp_path, monkeypatch, served, cause, on_lost):  # noqa: F811
    kernel_tls = f"{certificates['node.pem']},{certificates['node.key']},{certificates['ca.pem']}"
    monkeypatch.setenv("KERNEL_TLS", kernel_tls)  # (the registration's connection, here)
    system = System(tmp_path, options=node_options(certificates))
    handler, context = (say_nothing, untrusted(certificates)) if served == "untrusted" else \
        (answer_in_plain_http, None)
    publisher = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    port = publisher.sockets[0].getsockname()[1]
    directory = None
    try:
        await asyncio.to_thread(system.start_coordinator)
        directory = Directory(("127.0.0.1", system.port), system.env["KERNEL_SECRET"].encode())
        await directory.request("topic_publish", name="numbers", id="p", job="app:p", kind="stream",
                                record_type=None, partitions=1, partition=0, address=f"127.0.0.1:{port}")
        (tmp_path / "subscriber.py").write_text(SUBSCRIBER)
        app = await asyncio.create_subprocess_exec(
            sys.executable, "subscriber.py", f"127.0.0.1:{system.port}", on_lost, cwd=tmp_path,
            env=dict(system.env, KERNEL_TLS=kernel_tls), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(app.communicate(), 15)
        except TimeoutError:
            app.kill()
            _, err = await app.communicate()
            pytest.fail(f"the subscriber still ran 15 s on: {err.decode()[-2000:]}")
    finally:
        if directory is not None:
            await directory.close()
        publisher.close()
        await asyncio.to_thread(system.close)
    err = err.decode()
    assert app.returncode == 1, err[-2000:]
    assert f"TopicError: topic 'numbers': TLS failed with its publisher, which no retry mends: " \
           f"https://127.0.0.1:{port} {cause}" in err, err[-2000:]
    assert "(KERNEL_TLS here and the publisher's must go together)" in err, err[-2000:]
    assert "PublisherLost" not in err and "waiting for the topic" not in err, err[-2000:]
