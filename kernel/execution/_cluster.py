"""Cluster configuration: which process this is, where the others are, and
the secret and TLS files that let them in (`run(..., process_id=, peers=)`,
`python -m kernel.run ... --process-id I --peers host:port,...`).

The links themselves live in `net/_relay.py`; this module only turns what a
user typed into a checked `ClusterPlan`, with errors that say what is wrong.
"""

from __future__ import annotations

import os

# (read here without the transports by the system's commands: see _cluster_options;
# SECRET_VARIABLE is kept importable from here, as it was)
from kernel.execution._cluster_options import SECRET_VARIABLE, parse_peers, read_secret  # noqa: F401
from kernel.execution._plan import DEFAULT_STARTUP_TIMEOUT
from kernel.net._environment import heartbeat_from_environment
from kernel.net._relay import ClusterPlan, TLSFiles

# A job process's listening sockets for its links (descriptors, comma-separated:
# one per address of its host, localhost's 127.0.0.1 and ::1), handed over by
# its executor, which picked the port and kept it listening until then
LISTEN_FD_VARIABLE = "KERNEL_LINK_FD"
# Set ("1") by the executor beside LISTEN_FD_VARIABLE: every process of the job has
# its port held so, since before any of them started (`ClusterPlan.peers_held`)
PEERS_HELD_VARIABLE = "KERNEL_PEERS_HELD"


def inherited_listen_fd() -> int | tuple[int, ...] | None:
    """The descriptor LISTEN_FD_VARIABLE names, or the descriptors (taken
    out of the environment: a process this one starts does not inherit the
    sockets), else None."""
    text = os.environ.pop(LISTEN_FD_VARIABLE, "")
    if not text:
        return None
    parts = text.split(",")
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"{LISTEN_FD_VARIABLE}={text!r} is not a file descriptor")
    fds = tuple(int(part) for part in parts)
    # Not inherited by a program a step starts (`os.system`, `Popen(close_fds=False)`):
    # one left running held the port listening after the job had ended. (The
    # kernels and the relay are forked: they have it all the same.)
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError:  # (no descriptor: the relay says so, `_inherited_listener`)
            pass
    return fds[0] if len(fds) == 1 else fds


def inherited_peers_held() -> bool:
    """Whether this process's executor says every peer's port listened from
    before any process of the job started (PEERS_HELD_VARIABLE, taken out of
    the environment as LISTEN_FD_VARIABLE is). A user's own KERNEL_LINK_FD
    says nothing of the peers: theirs may not be listening yet."""
    return os.environ.pop(PEERS_HELD_VARIABLE, "") == "1"


def _tls_files(tls) -> TLSFiles | None:
    """None, a TLSFiles, or the paths (cert, key) or (cert, key, ca), each
    of a file that exists. tls="x" failed as an AttributeError, a tuple of
    four as TLSFiles' TypeError, and a number passed os.path.isfile as a
    file descriptor."""
    if tls is None:
        return None
    if isinstance(tls, (tuple, list)):
        paths = (str, os.PathLike)
        if not (len(tls) in (2, 3) and all(isinstance(p, paths) for p in tls[:2])
                and (len(tls) == 2 or tls[2] is None or isinstance(tls[2], paths))):
            raise ValueError(f"tls must be the paths (cert, key) or (cert, key, ca), got {tls!r}")
        tls = TLSFiles(*tls)
    if not isinstance(tls, TLSFiles):
        raise ValueError(f"tls must be the paths (cert, key) or (cert, key, ca), got {tls!r}")
    for path in (tls.cert, tls.key, tls.ca):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"TLS file not found: {path}")
    return tls


def cluster_plan(process_id, peers, cores: int, *, secret=None, secret_file=None, tls=None,
                 startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
                 heartbeat: float | None = None, fingerprint: str = "",
                 snapshots: bool = False, listen_fd: int | tuple[int, ...] | None = None,
                 peers_held: bool = False) -> ClusterPlan:
    """The checked plan of process `process_id` of the cluster `peers`;
    `heartbeat` None: KERNEL_HEARTBEAT where set now, else 2.5 s.
    `listen_fd`: a socket inherited, listening on this process's port, or
    several (its host's addresses: `ClusterPlan.listen_fd`); `peers_held`:
    `ClusterPlan.peers_held`."""
    addresses = parse_peers(peers)
    if heartbeat is None:
        heartbeat = heartbeat_from_environment()
    if not isinstance(process_id, int) or isinstance(process_id, bool) \
            or not 0 <= process_id < len(addresses):
        raise ValueError(f"process_id must be an int from 0 to {len(addresses) - 1} "
                         f"(one per address in peers), got {process_id!r}")
    tls = _tls_files(tls)
    for name, value in (("startup_timeout", startup_timeout), ("heartbeat", heartbeat)):
        if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return ClusterPlan(process_id, addresses, cores, read_secret(secret, secret_file),
                       float(startup_timeout), float(heartbeat), tls,
                       # whether it snapshots (a state_dir) too: a process with one waited for
                       # ever for the epoch agreement of a peer without one, and so did the peer
                       {"flow": fingerprint, "cores": cores, "processes": len(addresses),
                        "snapshots": bool(snapshots)}, listen_fd, peers_held)
