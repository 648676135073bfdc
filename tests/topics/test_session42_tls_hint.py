"""Session 42: a topic's publisher and subscriber whose coordinator serves
TLS, KERNEL_TLS not set in their process, are told what to check, as the
CLI is (`refused_hint`): they said "cannot reach the coordinator ...:
could not reach http://... within 1 s: Server disconnected", as for a
coordinator that was not there.

Real processes: a coordinator over TLS (the links' --tls-* options), then
a publisher and a subscriber, each an app of its own without KERNEL_TLS
(KERNEL_COORDINATOR_TIMEOUT short: the dial's tries end within 1 s)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import System
from test_system_tls import certificates, node_options  # noqa: F401  (a fixture: the CA and certificates)

APPS = {
    "publisher": "flow.from_iterable(range(10)).publish('numbers')",
    "subscriber": "flow.subscribe('numbers', timeout=2).collect()",
}
HINT = "(the coordinator closed the connection before any answer: it may serve TLS, and KERNEL_TLS is not " \
       "set here; or be over its limit of connections waiting to authenticate)"


def test_topic_apps_without_kernel_tls_are_told_the_coordinator_may_serve_tls(certificates, tmp_path):  # noqa: F811
    system = System(tmp_path, options=node_options(certificates))
    system.env.pop("KERNEL_TLS", None)
    try:
        system.start_coordinator()
        apps = {}
        for name, line in APPS.items():
            (tmp_path / f"{name}.py").write_text(
                f"import sys\nfrom kernel import Dataflow, run\nflow = Dataflow({name!r})\n{line}\n"
                "run(flow, coordinator=sys.argv[1])\n")
            apps[name] = subprocess.Popen([sys.executable, f"{name}.py", f"127.0.0.1:{system.port}"],
                                          cwd=tmp_path, env=dict(system.env, KERNEL_COORDINATOR_TIMEOUT="1"),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name, app in apps.items():
            _, err = app.communicate(timeout=60)
            assert app.returncode == 1 and "CoordinatorUnreachable: cannot reach the coordinator" in err, err
            assert HINT in err, f"{name}: {err[-2000:]}"
    finally:
        system.close()
