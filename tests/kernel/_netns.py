"""Network namespaces for cluster tests: N "hosts" on one switch.

`Switch(n)` creates a hub namespace holding a bridge and n host namespaces,
each with loopback up and an `eth0` (10.231.0.{i+1}/24) whose veth peer
`v{i}` sits on the hub's bridge. Nothing is added to the namespace the tests
run in: the bridge, the veths and the addresses all live in the new
namespaces, so concurrent runs (or the machine's own 10.x networks) cannot
clash; every namespace name carries this process's pid and a counter.

`cut(i)` takes `v{i}` down on the hub: host i's cable is pulled, packets to
and from it are silently lost (its own eth0 stays up, as a real cable cut
would leave it until the carrier goes), which only a heartbeat can notice.
"""

from __future__ import annotations

import itertools
import os
import subprocess

SUBNET = "10.231.0"
_counter = itertools.count()


class NetnsUnavailable(Exception):
    """Namespaces cannot be created here (not root, no `ip`, no netns support)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=check)


class Switch:
    def __init__(self, hosts: int) -> None:
        tag = f"sk{os.getpid()}x{next(_counter)}"
        self.hub = f"{tag}-hub"
        self.hosts = [f"{tag}-h{i}" for i in range(hosts)]
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(hosts)]
        self._created: list[str] = []

    def open(self) -> Switch:
        """Create everything; on any failure remove what was created."""
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Switch:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _up(self) -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root (`ip netns add`)")
        try:
            first = _ip("netns", "add", self.hub, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NetnsUnavailable(f"cannot run `ip netns add`: {exc}") from None
        if first.returncode != 0:
            raise NetnsUnavailable(f"`ip netns add` failed: {first.stderr.strip()}")
        self._created.append(self.hub)
        for ns in self.hosts:
            _ip("netns", "add", ns)
            self._created.append(ns)
        hub = ("-n", self.hub)
        _ip(*hub, "link", "add", "br0", "type", "bridge")
        _ip(*hub, "link", "set", "br0", "up")
        _ip(*hub, "link", "set", "lo", "up")
        for i, (ns, address) in enumerate(zip(self.hosts, self.addresses)):
            # Created in the hub with its peer straight in the host: the
            # namespace the tests run in never sees these names.
            _ip(*hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip(*hub, "link", "set", f"v{i}", "master", "br0")
            _ip(*hub, "link", "set", f"v{i}", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def exec_prefix(self, host: int) -> list[str]:
        """The argv prefix that runs a command on host `host`."""
        return ["ip", "netns", "exec", self.hosts[host]]

    def cut(self, host: int) -> None:
        """Pull host `host`'s cable (its port on the switch goes down)."""
        _ip("-n", self.hub, "link", "set", f"v{host}", "down")

    def plug(self, host: int) -> None:
        """Put host `host`'s cable back."""
        _ip("-n", self.hub, "link", "set", f"v{host}", "up")

    def close(self) -> None:
        """Delete every namespace created (their veths and bridge go with them)."""
        errors = []
        for ns in reversed(self._created):
            result = _ip("netns", "del", ns, check=False)
            if result.returncode != 0:
                errors.append(f"{ns}: {result.stderr.strip()}")
        self._created.clear()
        if errors:
            raise RuntimeError(f"could not delete network namespaces: {'; '.join(errors)}")
