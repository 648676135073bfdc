"""Kubernetes manifests for one streamkernel job: a headless Service and a
StatefulSet of M pods, each one process of the cluster (`python -m kernel
run PIPELINE --peers-from-env`): the pod's ordinal is its process id, and
its peers are the pods' stable DNS names through the headless Service.

    docker build -t streamkernel:latest -f deploy/kubernetes/Dockerfile .   # (the default --image)
    python deploy/kubernetes/render.py --replicas 3 --pipeline pipeline.py > job.yaml
    kubectl create secret generic streamkernel-secret --from-literal=secret=...
    kubectl apply -f job.yaml

The output is JSON, which is YAML too (kubectl reads either). The pipeline
file travels in a ConfigMap, mounted at /pipeline; the shared secret comes
from the Secret `SECRET_NAME` (key `secret`). streamkernel.yaml beside this
file is this script's output for the defaults and examples/wordcount.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PORT = 7000
# What Dockerfile beside this builds (a bare Python image cannot run the job:
# `No module named kernel`, and the pods crash-looped)
IMAGE = "streamkernel:latest"


def manifests(*, name: str = "streamkernel", replicas: int = 3, cores: int = 1,
              image: str = IMAGE, pipeline_name: str = "pipeline.py", pipeline_text: str = "",
              flow: str = "flow", namespace: str = "default", secret_name: str = "streamkernel-secret",
              port: int = PORT, cluster_domain: str = "cluster.local") -> list[dict]:
    if replicas < 1 or cores < 1:
        raise ValueError("replicas and cores must be at least 1")
    service = f"{name}-peers"
    labels = {"app.kubernetes.io/name": "streamkernel", "app.kubernetes.io/instance": name}
    meta = {"namespace": namespace, "labels": labels}
    env = [
        # the pod's own name (NAME-ORDINAL) is its HOSTNAME too; given explicitly for clarity
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "KERNEL_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "KERNEL_REPLICAS", "value": str(replicas)},
        {"name": "KERNEL_SERVICE", "value": service},
        {"name": "KERNEL_PORT", "value": str(port)},
        {"name": "KERNEL_SECRET", "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "secret"}}},
    ]
    if cluster_domain != "cluster.local":  # (the peers' DNS names end in it)
        env.append({"name": "KERNEL_CLUSTER_DOMAIN", "value": cluster_domain})
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-pipeline", **meta},
         "data": {pipeline_name: pipeline_text}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": service, **meta},
         "spec": {"clusterIP": "None",  # headless: one DNS name per pod
                  # peers must find each other before any is "ready"
                  "publishNotReadyAddresses": True,
                  "selector": labels, "ports": [{"name": "links", "port": port}]}},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, **meta},
         "spec": {"serviceName": service, "replicas": replicas,
                  # all at once: every process waits for its peers at start-up
                  "podManagementPolicy": "Parallel",
                  "selector": {"matchLabels": labels},
                  "template": {
                      "metadata": {"labels": labels},
                      "spec": {"containers": [{
                          "name": "kernel", "image": image,
                          "command": ["python", "-m", "kernel", "run", f"/pipeline/{pipeline_name}:{flow}",
                                      "--cores", str(cores), "--peers-from-env"],
                          "env": env,
                          "ports": [{"name": "links", "containerPort": port}],
                          # whole CPUs, requested = limited (Guaranteed): under the static CPU manager
                          # the pod gets CPUs of its own, its kernels pinned within them; else they
                          # share the node's and are not pinned (kernel/execution/_cores.py)
                          "resources": {"requests": {"cpu": str(cores)}, "limits": {"cpu": str(cores)}},
                          "volumeMounts": [{"name": "pipeline", "mountPath": "/pipeline"}]}],
                          "volumes": [{"name": "pipeline", "configMap": {"name": f"{name}-pipeline"}}]}}}},
    ]


def render(items: list[dict]) -> str:
    """A YAML stream (each document JSON, which YAML reads)."""
    return "".join(f"---\n{json.dumps(item, indent=2)}\n" for item in items)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="streamkernel")
    parser.add_argument("--replicas", type=int, default=3, help="processes (pods)")
    parser.add_argument("--cores", type=int, default=1, help="kernels per process")
    parser.add_argument("--image", default=IMAGE,
                        help=f"an image with streamkernel installed (default {IMAGE}: the Dockerfile here)")
    parser.add_argument("--pipeline", required=True, metavar="FILE[:NAME]")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--secret-name", default="streamkernel-secret")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--cluster-domain", default="cluster.local", help="the cluster's DNS domain")
    args = parser.parse_args(argv)
    path, _, flow = args.pipeline.partition(":")
    sys.stdout.write(render(manifests(
        name=args.name, replicas=args.replicas, cores=args.cores, image=args.image,
        pipeline_name=Path(path).name, pipeline_text=Path(path).read_text(), flow=flow or "flow",
        namespace=args.namespace, secret_name=args.secret_name, port=args.port,
        cluster_domain=args.cluster_domain)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
