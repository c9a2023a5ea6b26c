"""deploy/k8s: every manifest validates against the Kubernetes schemas (kubernetes-validate ships them: nothing is
fetched), the kustomization renders, and the containers run commands the processes' own parsers accept."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from generator.config import GeneratorConfig
from generator.metrics import GeneratorMetrics
from monitor.config import MonitorConfig
from tests.deploy.compose import ROOT

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32"


def documents(path: Path) -> list[dict[str, Any]]:
    """Return the YAML documents of one manifest file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Return every resource of deploy/k8s by (kind, name)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for name in kustomization["resources"]
        for doc in documents(K8S / name)
    }


def container(resource: dict[str, Any]) -> dict[str, Any]:
    """Return a workload's only container."""
    (only,) = resource["spec"]["template"]["spec"]["containers"]
    return only


# What the secret i2v-secrets holds (README "Kubernetes" says how to create it), as stand-ins.
SECRET = {"MONITOR_STORE": "influxdb://admin:secret@influxdb:8086/i2v"}


def environ(spec: dict[str, Any]) -> dict[str, str]:
    """Return a container's environment, with a stand-in for every value read from the secret or the pod."""
    return {
        item["name"]: item.get("value", SECRET.get(item["name"], f"from-{item['name'].lower()}"))
        for item in spec.get("env", [])
    }


def test_the_kustomization_lists_every_manifest_in_the_folder() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_each_manifest_validates_against_the_kubernetes_schemas(path: str) -> None:
    for doc in documents(K8S / path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomize_renders_resources_that_validate() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests were validated one by one above")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(rendered) == len(manifests())
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "i2v"


def test_gpu_workers_take_one_gpu_on_gpu_nodes_and_are_ready_once_the_model_is_loaded() -> None:
    resources = manifests()
    worker = resources[("Deployment", "generator-worker")]
    pod = worker["spec"]["template"]["spec"]
    spec = container(worker)
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    command = spec["command"]
    assert command[:4] == ["python", "-m", "generator", "worker"]
    config = GeneratorConfig.from_sources(command[4:], environ=environ(spec))
    config.validate(serves_jobs=False)  # a worker serves probes only: no viewer token
    assert config.queue_url == "redis://redis:6379/0"
    for probe in ("startupProbe", "readinessProbe"):
        assert spec[probe]["httpGet"] == {"path": "/ready", "port": config.port}  # /ready: model loaded and warmed
    # Long enough for the running job to reach its next step and go back to the queue.
    assert pod["terminationGracePeriodSeconds"] >= 60


def test_the_api_and_the_monitors_share_the_clips_and_the_monitors_run_on_every_gpu_node() -> None:
    resources = manifests()
    api, worker = resources[("Deployment", "generator-api")], resources[("Deployment", "generator-worker")]
    monitor = resources[("DaemonSet", "monitor")]
    api_config = GeneratorConfig.from_sources(container(api)["command"][3:], environ=environ(container(api)))
    api_config.validate()
    assert api_config.queue_url == "redis://redis:6379/0"
    assert "nvidia.com/gpu" not in container(api)["resources"].get("limits", {})  # the API runs no model
    monitor_config = MonitorConfig.from_sources(
        container(monitor)["command"][3:], environ=environ(container(monitor))
    ).validate()
    assert monitor_config.generator_url == "http://generator:7860"
    assert monitor["spec"]["template"]["spec"]["nodeSelector"] == worker["spec"]["template"]["spec"]["nodeSelector"]
    assert monitor["spec"]["template"]["spec"]["hostPID"] is True
    clips = {
        name: next(m["mountPath"] for m in container(r)["volumeMounts"] if m["name"] == "outputs")
        for name, r in (("api", api), ("worker", worker), ("monitor", monitor))
    }
    assert set(clips.values()) == {str(api_config.outputs)}, clips
    claim = resources[("PersistentVolumeClaim", "outputs")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert resources[("Service", "monitor-local")]["spec"]["internalTrafficPolicy"] == "Local"


def test_redis_persists_and_influxdb_is_a_statefulset() -> None:
    resources = manifests()
    redis = resources[("StatefulSet", "redis")]
    args = container(redis)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"]
    assert resources[("StatefulSet", "influxdb")]["spec"]["volumeClaimTemplates"]


def test_the_hpa_scales_workers_on_the_queue_depth_the_api_exports() -> None:
    resources = manifests()
    hpa = resources[("HorizontalPodAutoscaler", "generator-worker")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "generator-worker"
    (metric,) = hpa["spec"]["metrics"]
    name = metric["external"]["metric"]["name"]
    adapter = yaml.safe_load(resources[("ConfigMap", "prometheus-adapter-i2v")]["data"]["config.yaml"])
    (rule,) = adapter["externalRules"]
    assert rule["name"]["as"] == name
    assert rule["seriesQuery"].startswith(name)
    metrics = GeneratorMetrics()
    metrics.watch_queue(lambda: {"normal": (3, 1.5)})
    exported = {family.name for family in metrics.registry.collect()}
    assert name in exported
