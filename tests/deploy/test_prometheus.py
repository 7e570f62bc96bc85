"""deploy/prometheus and deploy/grafana: promtool checks and unit tests, relabeling in a real
Prometheus, and the dashboard's and rules' queries against the metrics a real server exposes.

promtool and prometheus come from Debian's 'prometheus' package (`make test` installs it);
the tests fail, never skip, without them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT, ServerThread
from tests.server.test_metrics import Prometheus, require_binary

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = [PROMETHEUS_DIR / "alerts_test.yml", PROMETHEUS_DIR / "alerts_test_daily.yml"]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "digitserve.json"

SEVERITIES = {"critical", "warning", "info"}
PANEL_TYPES = {"row", "timeseries", "stat", "heatmap", "table"}
# Series Prometheus makes itself rather than scraping them.
SYNTHETIC = {"up", "ALERTS", "ALERTS_FOR_STATE"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


def run_promtool(promtool: str, *args: str | Path, cwd: Path = PROMETHEUS_DIR) -> str:
    done = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerting_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r]


# ---- the scrape configuration ----------------------------------------------------------------


def checkable_config(targets_file: Path) -> dict[str, Any]:
    """prometheus.yml with Kubernetes discovery swapped for files of the same labels.

    Debian builds Prometheus and promtool without Kubernetes discovery, so they reject
    ``kubernetes_sd_configs``. A file_sd target carrying the ``__meta_kubernetes_*``
    labels goes through the same relabeling as a discovered pod.
    """
    config = load_yaml(CONFIG)
    (job,) = [j for j in config["scrape_configs"] if "kubernetes_sd_configs" in j]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["file_sd_configs"] = [{"files": [str(targets_file)]}]
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
    return config


def test_scrape_config_shape() -> None:
    config = load_yaml(CONFIG)
    assert config["rule_files"] == ["alerts.yml"]  # relative to the config file
    assert (CONFIG.parent / "alerts.yml").is_file()
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"digitserve-local", "digitserve"}
    local = jobs["digitserve-local"]
    assert local["metrics_path"] == "/metrics"
    assert local["static_configs"][0]["targets"] == ["localhost:8501"]
    pods = jobs["digitserve"]
    assert pods["kubernetes_sd_configs"] == [{"role": "pod"}]
    sources = {tuple(r.get("source_labels", [])) for r in pods["relabel_configs"]}
    assert ("__meta_kubernetes_pod_annotation_prometheus_io_scrape",) in sources
    assert any("__meta_kubernetes_pod_annotation_prometheus_io_port" in s for s in sources)


def test_promtool_checks_the_config_and_its_rules(promtool: str, tmp_path: Path) -> None:
    targets = tmp_path / "pods.json"
    targets.write_text("[]")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(checkable_config(targets)))
    output = run_promtool(promtool, "check", "config", config)
    assert "SUCCESS" in output and "rule files found" in output


def pod(name: str, ip: str, port: str, **meta: str) -> dict[str, Any]:
    labels = {
        "__meta_kubernetes_namespace": "ml",
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_node_name": "node-1",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "digitserve",
        "__meta_kubernetes_pod_label_app_kubernetes_io_version": "0.1.0",
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
        "__meta_kubernetes_pod_annotation_prometheus_io_port": "8501",
    }
    labels.update({f"__meta_kubernetes_pod_{k}": v for k, v in meta.items()})
    return {"targets": [f"{ip}:{port}"], "labels": labels}


def test_kubernetes_relabeling_in_a_real_prometheus(tmp_path: Path) -> None:
    # What Kubernetes discovery reports: one target per declared container port.
    pods = [
        pod("ds-a", "10.0.0.1", "8500"),
        pod("ds-a", "10.0.0.1", "8501"),  # the same pod's metrics port: merged
        pod(
            "ds-b",
            "10.0.0.2",
            "8500",
            annotation_prometheus_io_port="9000",
            annotation_prometheus_io_path="/custom",
        ),
        pod("redis", "10.0.0.3", "6379", label_app_kubernetes_io_name="redis"),
        pod("ds-quiet", "10.0.0.4", "8500", annotation_prometheus_io_scrape="false"),
        pod("ds-done", "10.0.0.5", "8500", phase="Succeeded"),
    ]
    targets = tmp_path / "pods.json"
    targets.write_text(json.dumps(pods))
    config = checkable_config(targets)
    config["global"]["scrape_interval"] = "1h"  # the pod IPs are made up: no scraping
    config.pop("rule_files")
    with Prometheus(config, tmp_path) as prom:
        # Discovered targets reach the scrape pools within about 5 s of start-up.
        deadline = time.monotonic() + 30
        while True:
            data = prom.api("targets", state="any")
            if sum(t["labels"]["job"] == "digitserve" for t in data["activeTargets"]) >= 2:
                break
            assert time.monotonic() < deadline, f"no pods discovered: {data}"
            time.sleep(0.2)
    active = {
        t["scrapeUrl"]: t["labels"]
        for t in data["activeTargets"]
        if t["labels"]["job"] == "digitserve"
    }
    common = {"job": "digitserve", "namespace": "ml", "node": "node-1", "app_version": "0.1.0"}
    assert active == {
        "http://10.0.0.1:8501/metrics": {**common, "instance": "10.0.0.1:8501", "pod": "ds-a"},
        "http://10.0.0.2:9000/custom": {**common, "instance": "10.0.0.2:9000", "pod": "ds-b"},
    }
    dropped = {t["discoveredLabels"]["__meta_kubernetes_pod_name"] for t in data["droppedTargets"]}
    assert dropped == {"redis", "ds-quiet", "ds-done"}


# ---- rules -------------------------------------------------------------------------------------


def test_promtool_checks_the_rules(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", RULES)
    assert "SUCCESS" in output


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:
    output = run_promtool(promtool, "test", "rules", *RULE_TESTS)
    assert output.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_is_labelled_and_explained() -> None:
    alerts = alerting_rules()
    assert len(alerts) >= 10
    for rule in alerts:
        name = rule["alert"]
        assert name.startswith("Digitserve"), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        for key in ("summary", "description", "runbook"):
            assert len(annotations.get(key, "").strip()) > 20, f"{name}: {key}"


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        suite = load_yaml(path)
        assert suite["rule_files"] == ["alerts.yml"]
        for case in suite["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alerting_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown staying silent"


# ---- the dashboard -----------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def test_dashboard_is_importable_grafana_json() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    assert board.get("id") is None  # Grafana assigns ids on import
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["type"] == "query"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


def test_dashboard_covers_the_service() -> None:
    """Each concern of the service has a panel (by the metric it shows)."""
    text = "\n".join(expressions_of_dashboard())
    for metric in [
        "digitserve_requests_total",
        "digitserve_request_duration_seconds_bucket",
        "digitserve_inflight_requests",
        "digitserve_stream_items_total",
        "digitserve_queue_depth_images",
        "digitserve_batch_queue_wait_seconds_bucket",
        "digitserve_batch_compute_seconds_bucket",
        "digitserve_batch_size_images_bucket",
        "digitserve_batch_padding_images_total",
        "digitserve_batch_failures_total",
        "digitserve_rejections_total",
        "digitserve_model_version_info",
        "digitserve_model_available_versions",
        "digitserve_model_load_duration_seconds",
        "digitserve_model_load_failures_total",
        "digitserve_predictions_total",
        "digitserve_prediction_confidence_bucket",
        "digitserve_low_confidence_predictions_total",
        "digitserve_images_classified_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "digitserve_build_info",
    ]:
        assert metric in text, f"no panel shows {metric}"
    types = {p["type"] for p in dashboard()["panels"]}
    assert {"timeseries", "stat", "heatmap", "table"} <= types


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*", "$model": ".*"}


def expressions_of_dashboard() -> list[str]:
    board = dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    return exprs


def as_promql(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query, given to it as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
        for i, expr in enumerate(expressions_of_dashboard())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", path)


# ---- metric names against a real server -----------------------------------------------------

# Words of PromQL that look like names: keywords, and names followed by "(" are functions.
KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "inf", "nan", "atan2"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a lexer, not a parser: enough for ours)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    # label lists, with their keyword: `sum by (job) (x)` then reads as a call of sum
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w:.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|s|m|h|d|w|y)?\b", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        is_call = re.match(r"\s*\(", text[match.end() :]) is not None
        if not is_call and word not in KEYWORDS:
            names.add(word)
    return names


def test_metric_name_lexer() -> None:
    expr = (
        'sum by (job, model) (rate(a_total{code!~"OK|X"}[5m] offset 1h)) / ignoring (digit) '
        "group_left sum(b:c:ratio) > 0.5 * 8192 and on (job) histogram_quantile(0.99, d_bucket)"
        ' or vector(1e3) unless label_replace(e, "rpc", "x", "", "")'
    )
    assert metric_names(expr) == {"a_total", "b:c:ratio", "d_bucket", "e"}


def exposed_names(exposition: str) -> set[str]:
    """Names a scrape can yield: each family's samples by its declared type, plus those seen."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {name, f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_queries_use_only_metrics_the_server_exposes(shared_server: ServerThread) -> None:
    with urllib.request.urlopen(shared_server.metrics_url, timeout=10) as reply:
        exposed = exposed_names(reply.read().decode())
    assert "digitserve_requests_total" in exposed  # declared before any request
    recorded = {
        r["record"] for g in load_yaml(RULES)["groups"] for r in g["rules"] if "record" in r
    }
    known = exposed | recorded | SYNTHETIC
    queries = {
        f"rule {r.get('record') or r.get('alert')}": r["expr"]
        for g in load_yaml(RULES)["groups"]
        for r in g["rules"]
    }
    queries |= {f"dashboard query {i}": e for i, e in enumerate(expressions_of_dashboard())}
    board = dashboard()
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["definition"])
            assert inner, variable["definition"]
            queries[f"variable {variable['name']}"] = inner.group(1)
    for where, expr in queries.items():
        names = metric_names(expr)
        assert names, f"{where} selects no metric: {expr}"
        unknown = names - known
        assert not unknown, f"{where} uses metrics no server exposes: {sorted(unknown)}"
