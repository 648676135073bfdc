"""A cluster's process id and peers from a resource manager's environment,
instead of `--process-id` and `--peers` typed by hand:

* `--slurm` (`srun -n M python -m kernel run pipeline.py --slurm`): the
  process id is SLURM_PROCID, the process count SLURM_NTASKS, the hosts
  SLURM_STEP_NODELIST (hostlist syntax, `node[1-3,5]`) with
  SLURM_STEP_TASKS_PER_NODE (`2(x3),1`) tasks each, placed in blocks (Slurm's
  default distribution: tasks 0..k-1 on the first node, ...; or cyclic,
  which srun says by itself where no node holds two tasks); the task
  with local index l on its node listens on `--port-base` + l, or, without
  `--port-base`, on the l-th port Slurm reserved for the step
  (SLURM_STEP_RESV_PORTS: `srun --resv-ports=N`, or every step where
  slurm.conf has `MpiParams=ports=...`), else on 7000 + l.
* `--peers-from-env` (a Kubernetes StatefulSet, deploy/kubernetes/): the pod
  is `NAME-ORDINAL` (POD_NAME, else HOSTNAME's first label), the process id its ordinal; peers are the
  pods' stable DNS names `NAME-i.SERVICE.NAMESPACE.svc.cluster.local:PORT`
  for i < KERNEL_REPLICAS, with KERNEL_SERVICE (the headless Service),
  KERNEL_NAMESPACE (default `default`), KERNEL_PORT (default 7000) and
  KERNEL_CLUSTER_DOMAIN (default `cluster.local`: a cluster whose DNS
  domain is another names it there).
"""

from __future__ import annotations

import errno
import re

from kernel._open_files import pids_holding

DEFAULT_PORT_BASE = 7000


class ResourceManagerError(ValueError):
    """The environment does not describe a cluster we can run (says what is missing)."""


def expand_hostlist(text: str) -> list[str]:
    """Slurm's hostlist syntax: `node[1-3,5],gpu[01-02]x,login` ->
    node1 node2 node3 node5 gpu01x gpu02x login (zero padding kept;
    several bracket groups in one name multiply out)."""
    hosts: list[str] = []
    for item in _split_top(text):
        if not item:
            continue
        hosts += _expand_one(item)
    return hosts


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ResourceManagerError(f"malformed Slurm hostlist {text!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if depth:
        raise ResourceManagerError(f"malformed Slurm hostlist {text!r}: unbalanced '['")
    parts.append("".join(current).strip())
    return parts


def _expand_one(item: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", item)
    if match is None:
        return [item]
    head, tail = item[: match.start()], item[match.end():]
    names = []
    for piece in match.group(1).split(","):
        low, dash, high = piece.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ResourceManagerError(f"malformed Slurm hostlist range [{match.group(1)}] in {item!r}")
        width = len(low)
        for n in range(int(low), int(high if dash else low) + 1):
            names.append(f"{head}{n:0{width}d}")
    return [name + rest for name in names for rest in _expand_one(tail)] if "[" in tail else \
        [name + tail for name in names]


def tasks_per_node(text: str) -> list[int]:
    """SLURM_STEP_TASKS_PER_NODE: `2(x3),1` -> [2, 2, 2, 1]."""
    counts = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise ResourceManagerError(f"malformed tasks per node {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _need(env, *names: str) -> str:
    for name in names:
        if env.get(name):
            return env[name]
    raise ResourceManagerError(f"--slurm: {' or '.join(names)} is not set (run under srun)")


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ResourceManagerError(f"{name}={value!r} is not a number") from None


def from_slurm(env, port_base: int | None = None) -> tuple[int, str]:
    """(process id, peers) of this Slurm task. `port_base` None (no
    `--port-base`): the step's reserved ports, else DEFAULT_PORT_BASE on."""
    if not env.get("SLURM_STEP_NODELIST"):
        # A batch script's own environment (sbatch, salloc's shell) says
        # SLURM_PROCID=0 of SLURM_NTASKS without a step: it became process 0
        # of N and waited out the start-up timeout for peers nothing started
        missing = "SLURM_STEP_NODELIST is not set" if env.get("SLURM_JOB_ID") else "no Slurm job step"
        raise ResourceManagerError(f"--slurm: {missing} (run it under srun: `srun -n M python -m kernel "
                                   "run PIPELINE --slurm`, in the batch script too)")
    process = _int(_need(env, "SLURM_PROCID"), "SLURM_PROCID")
    ntasks = _int(_need(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"), "SLURM_NTASKS")
    nodes = expand_hostlist(env["SLURM_STEP_NODELIST"])
    per_node_text = env.get("SLURM_STEP_TASKS_PER_NODE")
    if per_node_text:
        per_node = tasks_per_node(per_node_text)
    else:  # spread as evenly as Slurm's block distribution does
        base, extra = divmod(ntasks, len(nodes))
        per_node = [base + (i < extra) for i in range(len(nodes))]
    if len(per_node) != len(nodes) or sum(per_node) != ntasks:
        raise ResourceManagerError(f"--slurm: {ntasks} tasks do not match {per_node_text!r} tasks per node "
                                   f"on {len(nodes)} node(s)")
    if not 0 <= process < ntasks:
        raise ResourceManagerError(f"--slurm: SLURM_PROCID={process} is not below SLURM_NTASKS={ntasks}")
    ports = _ports(env, port_base, max(per_node))
    places = _placed(per_node, env.get("SLURM_DISTRIBUTION") or "block")
    peers = [f"{_url_host(nodes[node])}:{ports[local]}" for node, local in places]
    return process, ",".join(peers)


def _ports(env, port_base: int | None, per_node: int) -> list[int]:
    """The ports of a node's tasks, by local index. A `--port-base` given
    wins (the command line says what it means); else the ports Slurm
    reserved for this step, the same numbers on each of its nodes and
    never another step's: two jobs on one node both on 7000 clashed."""
    reserved = env.get("SLURM_STEP_RESV_PORTS") if port_base is None else None
    if reserved:
        ports = _port_list(reserved)
        if len(ports) < per_node:
            raise ResourceManagerError(
                f"--slurm: SLURM_STEP_RESV_PORTS={reserved} reserves {_ports_count(len(ports))} for "
                f"{per_node} tasks on a node (srun --resv-ports={per_node}, or --port-base P)")
        return ports
    base = DEFAULT_PORT_BASE if port_base is None else port_base
    if not 0 < base <= 65536 - per_node:
        raise ResourceManagerError(f"--port-base {base} leaves no room for {per_node} ports")
    return list(range(base, base + per_node))


def _port_list(text: str) -> list[int]:
    """SLURM_STEP_RESV_PORTS, `12000-12002,12005`, as ports in order."""
    ports = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", part)
        if match is None or not 0 < int(match.group(1)) <= int(match.group(2) or match.group(1)) < 65536:
            raise ResourceManagerError(f"--slurm: malformed SLURM_STEP_RESV_PORTS {text!r}")
        ports += range(int(match.group(1)), int(match.group(2) or match.group(1)) + 1)
    return ports


def listen_advice(error, slurm: bool, reserved: bool) -> str:
    """What to add to a cluster process's "cannot listen" error (a
    `ListenFailed`): for a port in use, who holds it, as far as this
    machine's /proc tells, and with --slurm how two jobs or steps on one
    node keep apart (`reserved`: the ports were Slurm's reservation)."""
    if error.errno != errno.EADDRINUSE:
        return ""
    holder = port_holder(error.port)
    said = f"port {error.port} is held by {holder}" if holder else \
        f"port {error.port} is held by another program (or another job's process) on this machine"
    if not slurm:
        return f"{said}; give this process another port in --peers"
    if reserved:
        return (f"{said}, though Slurm reserved it for this step (SLURM_STEP_RESV_PORTS): a program started "
                "outside Slurm? --port-base P picks other ports, the same on every node")
    clash = "" if holder and " of Slurm job " not in holder else \
        f": two jobs or job steps on one node given the same --port-base (default {DEFAULT_PORT_BASE}) clash"
    return (f"{said}{clash}. Give each its own --port-base P, or leave --port-base out and let Slurm reserve "
            "each step's ports: srun --resv-ports=N (N: tasks per node), with MpiParams=ports=12000-12999 "
            "in slurm.conf (which then reserves them for every step)")


def port_holder(port: int) -> str | None:
    """"process PID (`COMMAND`) of Slurm job J, step S" for the process
    listening on TCP `port` in this network namespace, or None where
    /proc does not say (another user's process, not Linux)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                for row in list(rows)[1:]:
                    fields = row.split()  # sl, local addr:port (hex), remote, state (0A: listen)... inode
                    if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                        sockets.add(f"socket:[{fields[9]}]")
        except (OSError, IndexError, ValueError):
            continue
    for pid in pids_holding(sockets):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                # (one line: a `python -c` script's newlines would break the error's line)
                command = " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = dict(item.partition(b"=")[::2] for item in f.read().split(b"\0"))
        except OSError:  # gone meanwhile, or not ours to read
            continue
        job, step = environ.get(b"SLURM_JOB_ID"), environ.get(b"SLURM_STEP_ID")
        of = f" of Slurm job {job.decode()}" + (f", step {step.decode()}" if step else "") if job else ""
        return f"process {pid} (`{command[:80]}`){of}"
    return None


def _ports_count(n: int) -> str:
    return "1 port" if n == 1 else f"{n} ports"


def _placed(per_node: list[int], distribution: str) -> list[tuple[int, int]]:
    """(node, local index) of each task, in task order, for Slurm's
    distribution across nodes (the part before ':'): block fills each node
    in turn, cyclic deals the tasks out one a node, round after round. srun
    itself exports cyclic whenever no node holds two tasks (one task, one
    a node): the same places as block's."""
    across = distribution.split(":")[0].split(",")[0]
    if across not in ("block", "cyclic", "*", ""):  # (plane=N, arbitrary: another order, even one a node)
        raise ResourceManagerError(f"--slurm: the {across} distribution is not supported (block or cyclic; "
                                   f"got SLURM_DISTRIBUTION={distribution})")
    if across == "cyclic" or max(per_node) <= 1:
        return [(node, turn) for turn in range(max(per_node)) for node, count in enumerate(per_node)
                if turn < count]
    return [(node, local) for node, count in enumerate(per_node) for local in range(count)]


def from_kubernetes(env) -> tuple[int, str]:
    """(process id, peers) of this pod of a StatefulSet."""
    # POD_NAME (the manifest's, from the downward API) first: a pod's
    # HOSTNAME is its FQDN with `setHostnameAsFQDN`, and a node's name with
    # `hostNetwork` (which could end in a number: the wrong ordinal)
    given = "POD_NAME" if env.get("POD_NAME") else "HOSTNAME"
    pod = (env.get(given) or "").split(".")[0]
    name, _, ordinal = pod.rpartition("-")
    if not name or not ordinal.isdigit():
        raise ResourceManagerError(f"--peers-from-env: the pod name {pod!r} ({given}) is not "
                                   "STATEFULSET-ORDINAL")
    for variable in ("KERNEL_REPLICAS", "KERNEL_SERVICE"):
        if not env.get(variable):
            raise ResourceManagerError(f"--peers-from-env: {variable} is not set")
    replicas = _int(env["KERNEL_REPLICAS"], "KERNEL_REPLICAS")
    port = _int(env.get("KERNEL_PORT") or "7000", "KERNEL_PORT")
    namespace = env.get("KERNEL_NAMESPACE") or "default"
    if not 0 <= int(ordinal) < replicas:
        raise ResourceManagerError(f"--peers-from-env: pod {pod} is not one of {replicas} replicas")
    # (a cluster's DNS domain is cluster.local unless its admin chose another)
    domain = (env.get("KERNEL_CLUSTER_DOMAIN") or "cluster.local").strip(".")
    peers = [f"{name}-{i}.{env['KERNEL_SERVICE']}.{namespace}.svc.{domain}:{port}"
             for i in range(replicas)]
    return int(ordinal), ",".join(peers)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
