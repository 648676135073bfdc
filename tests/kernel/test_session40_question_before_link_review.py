"""Session 40 review (third round): process 0, its start-up timeout passed
with process 1 not linked, asks process 1 why (a twin of ours linked there?).
Where that question reached process 1 before process 1's own link to process
0 had its answer (process 0 had taken the link; process 1 had not heard so
yet), process 1 logged "refused link from ...: process 0 is not a peer of
this process" in a run that then completed: a warning, in a healthy run, for
the question of the very process it was linking. A lower-numbered process of
the plan asking is refused quietly, as for the question of one linked.

Made deterministic by two proxies the test holds: one on process 1's way to
process 0 (its link, process 0's answer held), one on process 0's way to
process 1 (its question)."""

from __future__ import annotations

import socket
import threading

import pytest
from _ports import free_ports, listening, wait_until
from test_session35_cluster_links_review import PIPELINE
from test_session40_probe_crossing_link_review import _ended_without_a_word, _forward, _let_go, _start

PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")


def _link_with_answer_held(held: socket.socket, port: int, pumps, asked: threading.Event,
                           answer_held: threading.Event, release: threading.Event) -> socket.socket:
    """Process 1's link forwarded to process 0: its hello held until `asked`
    (process 0's question on its way), process 0's answer to it until `release`."""
    hello_sent = threading.Event()
    onward = socket.create_connection(("127.0.0.1", port), timeout=PROMPTLY)
    onward.settimeout(None)
    held.settimeout(None)

    def up() -> None:  # process 1 -> process 0: its upgrade, then its hello
        chunks = 0
        try:
            while data := held.recv(65536):
                chunks += 1
                if chunks == 2:  # (its hello, sent once the challenge came)
                    asked.wait(PROMPTLY)
                    hello_sent.set()
                onward.sendall(data)
        except OSError:
            pass
        finally:
            try:
                onward.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def down() -> None:  # process 0 -> process 1: upgrade, challenge; the answer held
        try:
            while data := onward.recv(65536):
                if hello_sent.is_set():
                    answer_held.set()
                    release.wait(PROMPTLY)
                held.sendall(data)
        except OSError:
            pass
        finally:
            try:
                held.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    for target in (up, down):
        pumps.append(threading.Thread(target=target, daemon=True))
        pumps[-1].start()
    return onward


def test_process_zeros_question_before_process_one_hears_its_link_taken_is_not_logged(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    a, b, to_zero, to_one = free_ports(4)
    on_way_to_zero = socket.create_server(("127.0.0.1", to_zero))
    on_way_to_one = socket.create_server(("127.0.0.1", to_one))
    asked, answer_held, release = threading.Event(), threading.Event(), threading.Event()
    procs, held, pumps = [], [], []
    try:
        for sock in (on_way_to_zero, on_way_to_one):
            sock.settimeout(PROMPTLY)
        procs.append(_start(tmp_path, 1, f"127.0.0.1:{to_zero},127.0.0.1:{b}", "30"))
        held.append(on_way_to_zero.accept()[0])  # process 1's link to process 0, held here
        procs.append(_start(tmp_path, 0, f"127.0.0.1:{a},127.0.0.1:{to_one}", "2"))
        wait_until(lambda: listening(a), timeout=PROMPTLY, what="process 0 to listen")
        # (its upgrade and process 0's challenge through before process 0's timeout: the question,
        # one try of a second, waits on no more than the hello, the answer and itself)
        held.append(_link_with_answer_held(held[0], a, pumps, asked, answer_held, release))
        held.append(on_way_to_one.accept()[0])  # process 0's timeout passed: its question, held here
        asked.set()
        assert answer_held.wait(PROMPTLY)  # process 0 took the link; process 1 has not heard
        held.append(_forward(held[2], b, pumps))  # the question reaches process 1, not yet linked
        # the question's end (process 1's refusal) comes back to process 0 through the pump
        wait_until(lambda: not any(p.is_alive() for p in pumps[2:]), timeout=PROMPTLY,
                   what="the question to be answered")
        release.set()
        wait_until(lambda: (tmp_path / "started").exists(), timeout=PROMPTLY, what="the kernels to start")
        (tmp_path / "go").touch()
        codes = [p.wait(PROMPTLY) for p in procs]
    finally:
        release.set()
        _let_go(procs, (*held, on_way_to_zero, on_way_to_one), pumps)
    _ended_without_a_word(tmp_path, codes)
