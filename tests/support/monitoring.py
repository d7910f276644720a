"""What the alerting rules (deploy/prometheus) and the dashboard (deploy/grafana) read, and
what the services export: the metric names on both sides, and the Prometheus binaries."""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

from tests.support.ci import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "paylane.json"
#: The modules whose import registers every metric of a service.
SERVICE_MODULES = (
    "paylane_ingress.main",
    "paylane_order.main",
    "paylane_entitlement.main",
    "paylane_notifier.main",
)
_METRIC = re.compile(r"\b(paylane_[a-z0-9_]+|up)\b")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def tool(name: str, package: str = "prometheus") -> str:
    """The path of a Prometheus binary (Debian's ``prometheus`` or
    ``prometheus-alertmanager`` package, which .ci/run installs): a failure in CI, a skip
    elsewhere."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} not found: apt-get install {package} (as .ci/run does)")
    return path


def alerting_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    """Every query of every panel of the committed dashboard."""

    def walk(panels: list[dict[str, Any]]) -> list[str]:
        found = []
        for panel in panels:
            found += [t["expr"] for t in panel.get("targets") or []]
            found += walk(panel.get("panels") or [])
        return found

    return walk(json.loads(DASHBOARD.read_text())["panels"])


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (paylane's and ``up``)."""
    return set(_METRIC.findall(expr))


def used_metric_names() -> set[str]:
    exprs = [rule["expr"] for rule in alerting_rules()] + dashboard_exprs()
    return {name for expr in exprs for name in metric_names(expr)}


def exported_metric_names() -> set[str]:
    """The series names the services' metrics produce (``up`` is Prometheus's own)."""
    for module in SERVICE_MODULES:
        importlib.import_module(module)
    names = {"up"}
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ())}
    return names
