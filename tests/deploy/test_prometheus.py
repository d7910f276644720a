"""deploy/prometheus checked with the real tools of Debian's ``prometheus`` package:
``promtool check config`` / ``check rules``, and ``promtool test rules`` with a firing and
a not-firing case for every alert; every runbook link lands on a section of
docs/operations.md; the Kubernetes PrometheusRule holds exactly these rules and the
ServiceMonitors scrape the ports that serve /metrics; compose's monitoring profile."""

from __future__ import annotations

import re
import runpy
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.manifests import by_kind, compose_config, kustomize
from tests.support.monitoring import (
    PROMETHEUS_DIR,
    ROOT,
    RULES,
    alerting_rules,
    exported_metric_names,
    metric_names,
    tool,
)

OPERATIONS = ROOT / "docs" / "operations.md"
MONITORING = ROOT / "deploy" / "k8s" / "components" / "monitoring"
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "example"
JOBS = {"ingress": 9080, "order": 9081, "entitlement": 9082, "notifier": 9083}


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    result = subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_checks_the_config_and_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in promtool("check", "rules", "rules.yml")


def test_promtool_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", "rules.test.yml")


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules.test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alerting_rules():
        name = rule["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no firing case"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no quiet case"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_alert_links_to_its_runbook_section() -> None:
    anchors = github_anchors(OPERATIONS.read_text())
    for rule in alerting_rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in {path}"
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]


def test_rules_read_only_metrics_the_services_export() -> None:
    exported = exported_metric_names()
    for rule in alerting_rules():
        missing = metric_names(rule["expr"]) - exported
        assert not missing, f"{rule['alert']} reads {missing}, which no service exports"


def test_the_prometheus_rule_is_generated_from_the_rules() -> None:
    render = runpy.run_path(str(PROMETHEUS_DIR / "prometheusrule.py"))["render"]
    committed = (MONITORING / "prometheusrule.yaml").read_text()
    assert render() == committed, "stale: run `make monitoring`"
    assert yaml.safe_load(committed)["spec"] == yaml.safe_load(RULES.read_text())


def test_kubernetes_monitoring_resources(tmp_path: Path) -> None:
    overlay = kustomize(OVERLAY)
    (rule,) = by_kind(overlay, "PrometheusRule").values()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "paylane"
    # What the Operator hands Prometheus is a rule file: promtool checks it as one.
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump(rule["spec"]))
    assert "SUCCESS" in promtool("check", "rules", str(extracted))
    assert rule["spec"] == yaml.safe_load(RULES.read_text())

    services = by_kind(overlay, "Service")
    monitors = by_kind(overlay, "ServiceMonitor")
    scraped: dict[str, int] = {}
    for monitor in monitors.values():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        for name, service in services.items():
            if selects(monitor["spec"]["selector"], service["metadata"]["labels"]):
                ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
                for endpoint in monitor["spec"]["endpoints"]:
                    assert endpoint["path"] == "/metrics"
                    scraped[name] = ports[endpoint["port"]]
    # The job label is the Service's name: the one the rules use. Each one's admin port.
    assert scraped == JOBS


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions with In) against ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_compose_prometheus_scrapes_every_service() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules.yml"]
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {job: [f"{job}:{port}"] for job, port in JOBS.items()}


def test_compose_monitoring_profile(secrets_dir: Path) -> None:
    services = compose_config(secrets_dir, "monitoring")["services"]
    assert {"prometheus", "grafana"} <= set(services)
    assert "prometheus" not in compose_config(secrets_dir)["services"]
    for name, port in (("prometheus", 9090), ("grafana", 3000)):
        service = services[name]
        assert service["profiles"] == ["monitoring"]
        assert service["healthcheck"]["test"], name
        assert [(p["host_ip"], p["target"]) for p in service["ports"]] == [("127.0.0.1", port)]
        for volume in service["volumes"]:
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), (name, volume["source"])
    mounts = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == str(PROMETHEUS_DIR / "prometheus.yml")
    assert mounts["/etc/prometheus/rules.yml"] == str(RULES)
    grafana = services["grafana"]
    password = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    assert password in {s["target"] for s in grafana["secrets"]}
