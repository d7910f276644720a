"""The dashboard as code: deploy/grafana/paylane.json is what dashboard.py makes
(grafana-foundation-sdk), every query reads metrics the services export, and compose
provisions it with the datasource its queries name."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import yaml

from tests.support.monitoring import (
    DASHBOARD,
    dashboard_exprs,
    exported_metric_names,
    metric_names,
)

GRAFANA = DASHBOARD.parent


def test_the_committed_dashboard_is_what_the_code_makes() -> None:
    render = runpy.run_path(str(GRAFANA / "dashboard.py"))["render"]
    assert render() == DASHBOARD.read_text(), "stale: run `make monitoring`"


def test_every_query_reads_metrics_the_services_export() -> None:
    exported = exported_metric_names()
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no paylane metric in {expr!r}"
        assert not names - exported, f"{expr!r} reads {names - exported}, which nothing exports"


def test_the_dashboard_covers_what_the_issue_asks() -> None:
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    used = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    for name in (
        "paylane_consumer_messages_total",  # payments by outcome, consumer throughput
        "paylane_ingress_ack_seconds_bucket",  # ack latency percentiles
        "paylane_queue_messages",  # queue depths and DLQs
        "paylane_outbox_backlog",
        "paylane_consumer_batch_size_bucket",
        "paylane_reconciler_findings_total",
        "paylane_notifier_connections",
    ):
        assert name in used, name
    ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids)) == len(titles)


def test_compose_provisions_the_dashboard_and_its_datasource() -> None:
    provisioning = GRAFANA / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "paylane.yml").read_text())[
        "providers"
    ]
    board = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in board["panels"] if p.get("datasource")}
    assert uids == {datasource["uid"]}
    assert datasource["url"] == "http://prometheus:9090"
    assert Path(provider["options"]["path"]).name == "paylane"
