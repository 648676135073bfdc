"""deploy/kubernetes/: the StatefulSet and headless Service rendered for M
replicas give each pod, as Kubernetes would start it (its name
NAME-ORDINAL as HOSTNAME, the env the manifest sets), the process id of its
ordinal and the peer list of every pod's stable DNS name, through the very
code `--peers-from-env` runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kernel.cli._resource_managers import ResourceManagerError, from_kubernetes

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("k8s_render", REPO / "deploy/kubernetes/render.py")
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)


def pod_env(statefulset: dict, ordinal: int, namespace: str) -> dict:
    """The environment of pod `ordinal`, resolved as the kubelet does."""
    pod = f"{statefulset['metadata']['name']}-{ordinal}"
    fields = {"metadata.name": pod, "metadata.namespace": namespace}
    env = {"HOSTNAME": pod}
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = "from-the-secret"
    return env


@pytest.mark.parametrize("replicas", [1, 3, 5])
def test_each_pod_gets_its_ordinal_as_process_id_and_every_pod_as_peers(replicas):
    items = render.manifests(name="wc", replicas=replicas, cores=2, namespace="jobs",
                             pipeline_name="wordcount.py", pipeline_text="...", port=7400)
    kinds = {item["kind"]: item for item in items}
    service, statefulset = kinds["Service"], kinds["StatefulSet"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert statefulset["spec"]["replicas"] == replicas
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == labels == statefulset["spec"]["selector"]["matchLabels"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "kernel", "run", "/pipeline/wordcount.py:flow",
                                    "--cores", "2", "--peers-from-env"]
    assert container["ports"][0]["containerPort"] == 7400
    expected_peers = ",".join(f"wc-{i}.wc-peers.jobs.svc.cluster.local:7400" for i in range(replicas))
    for ordinal in range(replicas):
        assert from_kubernetes(pod_env(statefulset, ordinal, "jobs")) == (ordinal, expected_peers)


def test_the_shipped_manifest_is_the_renderers_output():
    shipped = (REPO / "deploy/kubernetes/streamkernel.yaml").read_text()
    documents = [json.loads(doc) for doc in shipped.split("---\n") if doc.strip()]
    wordcount = (REPO / "examples/wordcount.py").read_text()
    assert documents == render.manifests(pipeline_name="wordcount.py", pipeline_text=wordcount)


def test_a_pod_outside_a_statefulset_is_told_what_is_missing():
    cases = [({"HOSTNAME": "web"}, "is not STATEFULSET-ORDINAL"),
             ({"HOSTNAME": "wc-0"}, "KERNEL_REPLICAS is not set"),
             ({"HOSTNAME": "wc-3", "KERNEL_REPLICAS": "3", "KERNEL_SERVICE": "s"}, "not one of 3 replicas"),
             ({"HOSTNAME": "wc-0", "KERNEL_REPLICAS": "x", "KERNEL_SERVICE": "s"}, "is not a number")]
    for env, message in cases:
        with pytest.raises(ResourceManagerError, match=message):
            from_kubernetes(env)


def test_a_cluster_of_another_dns_domain_names_its_peers_there():
    # (cluster.local was written into every peer's name: a cluster whose
    # admin chose another domain could not resolve them)
    items = render.manifests(name="wc", replicas=2, namespace="jobs", pipeline_name="p.py", pipeline_text="",
                             cluster_domain="corp.example.")
    statefulset = next(item for item in items if item["kind"] == "StatefulSet")
    env = pod_env(statefulset, 1, "jobs")  # (the manifest gives KERNEL_CLUSTER_DOMAIN)
    assert from_kubernetes(env) == (1, "wc-0.wc-peers.jobs.svc.corp.example:7000,"
                                       "wc-1.wc-peers.jobs.svc.corp.example:7000")
