"""Writes deploy/k8s/components/monitoring/prometheusrule.yaml: the Prometheus Operator's
PrometheusRule holding exactly the groups of rules.yml, so that compose and Kubernetes
alert alike from one source (`make monitoring`; tests/deploy/test_prometheus.py fails
when the committed file is not what this makes)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules.yml"
OUTPUT = HERE.parent / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
HEADER = "# Generated from deploy/prometheus/rules.yml by deploy/prometheus/prometheusrule.py\n"
HEADER += "# (`make monitoring`): edit rules.yml, never this file.\n"


def prometheus_rule() -> dict[str, Any]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "paylane",
            "labels": {"app.kubernetes.io/name": "paylane", "app.kubernetes.io/part-of": "paylane"},
        },
        "spec": {"groups": groups},
    }


def render() -> str:
    return HEADER + yaml.safe_dump(prometheus_rule(), sort_keys=False, width=100)


def main() -> int:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT.relative_to(HERE.parents[1])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
