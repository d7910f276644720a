"""paylane's Grafana dashboard, as code: ``make dashboard`` writes ``paylane.json`` from it
(grafana-foundation-sdk), which compose provisions (deploy/grafana/provisioning) and
which can be imported into any Grafana. Edit this file, never the JSON:
tests/deploy/test_grafana.py fails when the JSON is not what this file makes, or when
a query names a metric no service exports.

Queries read the datasource of uid ``prometheus`` (provisioned so in compose). Metrics
every replica reports alike (queue depths, outbox backlog) are aggregated with ``max``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUTPUT = Path(__file__).with_name("paylane.json")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
RATE = "[$__rate_interval]"
DLQ = 'queue=~".+\\\\.dlq"'
NOT_DLQ = 'queue!~".+\\\\.dlq"'


LEGEND = (
    common.VizLegendOptions()
    .show_legend(True)
    .display_mode(LegendDisplayMode.LIST)
    .placement(LegendPlacement.BOTTOM)
)
TOOLTIP = common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range()


def graph(title: str, unit: str, *queries: prometheus.Dataquery) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE)
    panel = panel.height(8).span(8).legend(LEGEND).tooltip(TOOLTIP)
    for target in queries:
        panel = panel.with_target(target)
    return panel


def quantiles(metric: str, by: str = "") -> list[prometheus.Dataquery]:
    """p50, p90 and p99 of the histogram ``metric`` (``by``: more labels to keep)."""
    labels = f"le{', ' + by if by else ''}"
    legend = f"p{{q}}{' {{' + by + '}}' if by else ''}"
    return [
        query(
            f"histogram_quantile({q / 100}, sum by ({labels}) (rate({metric}_bucket{RATE})))",
            legend.replace("{q}", str(q)),
            ref,
        )
        for q, ref in ((50, "A"), (90, "B"), (99, "C"))
    ]


def payments_row(board: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        board.with_row(dashboard.Row("Payments"))
        .with_panel(
            graph(
                "Payments per minute by outcome (order.payments)",
                "short",
                query(
                    "sum by (outcome) (rate(paylane_consumer_messages_total"
                    f'{{queue="order.payments"}}{RATE})) * 60',
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Notifications per minute (acknowledged, rejected)",
                "short",
                query(
                    "sum by (outcome) (rate(paylane_ingress_notifications_acked_total"
                    f"{RATE})) * 60",
                    "acked {{outcome}}",
                ),
                query(
                    "sum by (reason) (rate(paylane_ingress_notifications_rejected_total"
                    f"{RATE})) * 60",
                    "rejected {{reason}}",
                    "B",
                ),
            )
        )
        .with_panel(
            graph(
                "Acknowledgement latency (WeChat Pay waits 5 s)",
                "s",
                *quantiles("paylane_ingress_ack_seconds"),
            )
        )
        .with_panel(
            graph(
                "Publisher confirm p99 by service",
                "s",
                query(
                    "histogram_quantile(0.99, sum by (le, job) "
                    f"(rate(paylane_publish_confirm_seconds_bucket{RATE})))",
                    "{{job}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Publisher confirms failing, per second",
                "short",
                query(
                    "sum by (job, outcome) (rate(paylane_publish_confirm_seconds_count"
                    f'{{outcome!="confirmed"}}{RATE}))',
                    "{{job}} {{outcome}}",
                ),
            )
        )
    )


def queues_row(board: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        board.with_row(dashboard.Row("Queues and consumers"))
        .with_panel(
            stat.Panel()
            .title("Dead letters")
            .datasource(DATASOURCE)
            .height(8)
            .span(8)
            .graph_mode(BigValueGraphMode.AREA)
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .with_target(query(f"max by (queue) (paylane_queue_messages{{{DLQ}}})", "{{queue}}"))
        )
        .with_panel(
            graph(
                "Queue depth (ready messages)",
                "short",
                query(f"max by (queue) (paylane_queue_messages{{{NOT_DLQ}}})", "{{queue}}"),
            )
        )
        .with_panel(
            graph(
                "Consumers and paused consumers",
                "short",
                query(f"max by (queue) (paylane_queue_consumers{{{NOT_DLQ}}})", "{{queue}}"),
                query("sum by (queue) (paylane_consumer_paused)", "paused {{queue}}", "B"),
            )
        )
        .with_panel(
            graph(
                "Consumer throughput by queue",
                "ops",
                query(f"sum by (queue) (rate(paylane_consumer_messages_total{RATE}))", "{{queue}}"),
            )
        )
        .with_panel(
            graph(
                "Batch size (messages in one transaction)",
                "short",
                *quantiles("paylane_consumer_batch_size", "queue"),
            )
        )
        .with_panel(
            graph(
                "Handler time p99 by queue",
                "s",
                query(
                    "histogram_quantile(0.99, sum by (le, queue) "
                    f"(rate(paylane_consumer_handler_seconds_bucket{RATE})))",
                    "{{queue}}",
                ),
            )
        )
    )


def outbox_row(board: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        board.with_row(dashboard.Row("Outbox"))
        .with_panel(
            graph(
                "Outbox backlog",
                "short",
                query("max by (producer) (paylane_outbox_backlog)", "{{producer}}"),
            )
        )
        .with_panel(
            graph(
                "Oldest unpublished outbox event",
                "s",
                query("max by (producer) (paylane_outbox_oldest_age_seconds)", "{{producer}}"),
            )
        )
        .with_panel(
            graph(
                "Outbox events published per second",
                "ops",
                query(
                    f"sum by (producer) (rate(paylane_outbox_published_total{RATE}))",
                    "{{producer}}",
                ),
            )
        )
    )


def reconciler_row(board: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        board.with_row(dashboard.Row("Reconciler and daily bills"))
        .with_panel(
            graph(
                "Reconciler findings per hour by kind",
                "short",
                query(
                    "sum by (kind) (increase(paylane_reconciler_findings_total[1h]))", "{{kind}}"
                ),
            )
        )
        .with_panel(
            graph(
                "Reconciler pass duration",
                "s",
                *quantiles("paylane_reconciler_pass_seconds"),
            )
        )
        .with_panel(
            graph(
                "Bill differences per day by kind",
                "short",
                query("sum by (kind) (increase(paylane_bill_differences_total[1d]))", "{{kind}}"),
            )
        )
    )


def notifier_row(board: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        board.with_row(dashboard.Row("Notifier"))
        .with_panel(
            graph(
                "Connected clients by transport",
                "short",
                query("sum by (transport) (paylane_notifier_connections)", "{{transport}}"),
            )
        )
        .with_panel(
            graph(
                "Pushes per second by type",
                "ops",
                query(f"sum by (type) (rate(paylane_notifier_pushes_total{RATE}))", "{{type}}"),
            )
        )
        .with_panel(
            graph(
                "Connections refused by cap, per second",
                "ops",
                query(
                    f"sum by (cap) (rate(paylane_notifier_refused_connections_total{RATE}))",
                    "{{cap}}",
                ),
            )
        )
    )


def build() -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard("paylane")
        .uid("paylane")
        .tags(["paylane"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .readonly()
    )
    for row in (payments_row, queues_row, outbox_row, reconciler_row, notifier_row):
        board = row(board)
    return board


def render() -> str:
    """The dashboard's JSON, as committed; panels numbered in order (Grafana wants ids
    unique within a dashboard)."""
    model: models.Dashboard = build().build()
    for number, panel in enumerate(model.panels or [], start=1):
        assert isinstance(panel, models.Panel | models.RowPanel)
        panel.id_val = number
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
