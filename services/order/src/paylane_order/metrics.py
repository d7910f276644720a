"""Every Prometheus metric the order service defines, in one place (the ones every
service shares are in paylane_common.runtime.metrics). docs/metrics.md is generated from them
(`make docs`); the alerts in deploy/prometheus/rules.yml count several."""

from __future__ import annotations

from typing import get_args

from prometheus_client import Counter, Gauge, Histogram

from paylane_common.contract.events import PaymentSource

# --- the payment gate (gate.py) -------------------------------------------------------

UNCONFIRMED = Counter(
    "paylane_payments_unconfirmed_total",
    "Claims of a payment WeChat Pay does not stand behind, by source (the payment gate)",
    ["source"],
)
REFUNDS_UNCONFIRMED = Counter(
    "paylane_refunds_unconfirmed_total",
    "Claims of a refund WeChat Pay does not stand behind, by source (refunds.py)",
    ["source"],
)
NOT_VERIFIED = Counter(
    "paylane_notifications_not_verified_total",
    "Notifications carried by payment.succeeded that the order service could not verify"
    " (then asked about by a query), by reason",
    ["reason"],
)
for _source in get_args(PaymentSource):  # exported at 0: the alert counts the first one
    UNCONFIRMED.labels(_source)
REFUNDS_UNCONFIRMED.labels("cloudhosting")  # the one source of refund claims

# --- asking WeChat Pay on demand (status_query.py) ---------------------------------------

#: ``outcome``: paid (a payment applied), not_paid, already_settled, failed (WeChat Pay's
#: error), timeout.
STATUS_QUERIES = Counter(
    "paylane_order_status_queries_total",
    "Queries GET /orders/{no} made of WeChat Pay for a pending order, by outcome",
    ["outcome"],
)

# --- needs_review (review.py) -----------------------------------------------------------

#: Counted where the row moves (review.to_review), so every path is: the payment consumer,
#: the sweep, the reconciler, the daily bill. An alert fires at the first one.
NEEDS_REVIEW = Counter(
    "paylane_orders_needs_review_total",
    "Orders moved to needs_review (paylane will not settle them on its own)",
)
#: Counted once a refund's ABNORMAL is committed (WeChat Pay's notification or the
#: reconciler's query): the money waits for a remedy (``paylane refund abnormal``).
REFUNDS_ABNORMAL = Counter(
    "paylane_refunds_abnormal_total",
    "Refunds WeChat Pay reported ABNORMAL (the payer's account could not take the money)",
)
REVOKED = Counter(
    "paylane_orders_revoked_total",
    "Granted orders that went to needs_review, their grant taken back (order.revoked)",
)

# --- the sweep (sweep.py) ---------------------------------------------------------------

#: ``kind``: effect_paid, effect_refunded, effect_needs_review, effect_query_failed. A
#: steady rate of effect_paid means the cloud function's notifies are being lost; of
#: effect_needs_review, that someone marks orders paid that WeChat Pay never saw paid.
SWEPT = Counter(
    "paylane_effects_swept_total",
    "Orders another writer settled whose effect paylane applied from the sweep, by kind",
    ["kind"],
)
# Exported at 0: the alerts count the first one (lost internal notifies, needs_review).
for _kind in ("effect_paid", "effect_needs_review"):
    SWEPT.labels(_kind)

# --- the reconciler (reconciler.py) -----------------------------------------------------

#: ``kind``: paid_recovered, closed_expired, refund_success, still_pending,
#: not_placed_yet, query_failed, refund_query_failed, refund_closed_never_sent,
#: refund_not_at_wechatpay_yet, and others.
RECONCILER_FINDINGS = Counter(
    "paylane_reconciler_findings_total",
    "What the reconciler found and did, by kind",
    ["kind"],
)
#: Counted by the alerts (deploy/prometheus): exported at 0 from the start, so that the
#: first one is an increase.
for _kind in ("paid_recovered", "query_failed", "refund_query_failed"):
    RECONCILER_FINDINGS.labels(_kind)
#: Keep a pass shorter than ``RECONCILE_INTERVAL_S``.
RECONCILER_PASS_SECONDS = Histogram(
    "paylane_reconciler_pass_seconds",
    "How long a reconciler pass over every pending order and refund takes",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
#: Set when a pass (or the sweep in it) completes, on the replica that ran it: an alert
#: fires when the newest of them is too old (deploy/prometheus/rules.yml).
RECONCILER_LAST_SUCCESS = Gauge(
    "paylane_reconciler_last_success_timestamp_seconds",
    "When this process last completed a reconciler pass (Unix time)",
)
SWEEP_LAST_SUCCESS = Gauge(
    "paylane_sweep_last_success_timestamp_seconds",
    "When this process last completed the effects sweep of a reconciler pass (Unix time)",
)

# --- fulfilment (fulfilment.py) ----------------------------------------------------------

#: Set by every replica at the start of each of its reconciler passes, whether it then
#: holds the reconciler's lease or not (so every replica's is current): an alert fires
#: while it stays above 0 (deploy/prometheus/rules.yml).
FULFILMENT_OVERDUE = Gauge(
    "paylane_fulfilment_overdue_orders",
    "Paid business orders whose fulfilment is still pending FULFILMENT_DEADLINE_S after payment",
)

# --- the daily bills (bills.py) ---------------------------------------------------------

#: ``kind``: paid_not_here, paid_unknown_order, not_paid_at_wechat, amount_differs,
#: transaction_differs, not_in_bill_unconfirmed, refund_not_here, refund_not_at_wechat,
#: refund_amount_differs, refund_state_differs, refund_not_in_bill_unconfirmed,
#: bill_missing (docs/operations.md, "The daily bills").
BILL_DIFFERENCES = Counter(
    "paylane_bill_differences_total",
    "Differences between WeChat Pay's daily trade bill and the database, by kind",
    ["kind"],
)
#: ``outcome``: done, incomplete, other_replica, already_done, failed.
BILL_RUNS = Counter(
    "paylane_bill_reconcile_runs_total", "Daily bill reconciliations, by outcome", ["outcome"]
)
#: When a day's reconciliation last finished (``done``), or was found finished by another
#: replica: read from ``paylane_meta`` when the daily run starts, so that a restarted
#: replica does not report "never". An alert fires when it is too old.
BILLS_LAST_SUCCESS = Gauge(
    "paylane_bills_last_success_timestamp_seconds",
    "When a daily bill reconciliation last finished a day, as this process knows (Unix time)",
)

# --- shipping declared to WeChat (shipping.py) -------------------------------------------

#: ``outcome``: uploaded, already_done (WeChat had it: 10060002, 10060003, 10060023),
#: retry (busy, not found yet, a system error, WeChat unreachable: tried again later),
#: failed (any other errcode, or still not accepted after ``SHIPPING_RETRY_FOR_S``: the
#: order is flagged, an alert fires at the first one).
SHIPPING_UPLOADS = Counter(
    "paylane_shipping_uploads_total",
    "Shipping uploads to WeChat (upload_shipping_info) by outcome",
    ["outcome"],
)
for _outcome in ("uploaded", "already_done", "retry", "failed"):  # exported at 0
    SHIPPING_UPLOADS.labels(_outcome)
#: ``outcome``: refreshed, failed (stable_token answered an errcode).
WECHAT_TOKEN_REFRESHES = Counter(
    "paylane_wechat_token_refreshes_total",
    "Access tokens asked of WeChat (stable_token), by outcome",
    ["outcome"],
)
for _outcome in ("refreshed", "failed"):
    WECHAT_TOKEN_REFRESHES.labels(_outcome)
# --- webhooks to the backend (webhooks/dispatcher.py) -----------------------------------

#: ``outcome``: succeeded (2xx), failed_status (another status), error (no answer:
#: timeout, connection), refused (the target is not a public address).
WEBHOOK_ATTEMPTS = Counter(
    "paylane_webhook_attempts_total",
    "Webhook delivery attempts, by outcome",
    ["outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "paylane_webhook_attempt_seconds",
    "How long a webhook delivery attempt took (to its answer, or its error)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
#: ``reason``: gone (the endpoint answered 410), failing (failures only for
#: ``WEBHOOK_DISABLE_AFTER_S``). An alert fires at the first one.
WEBHOOK_ENDPOINTS_DISABLED = Counter(
    "paylane_webhook_endpoints_disabled_total",
    "Webhook endpoints disabled by paylane, by reason",
    ["reason"],
)
for _outcome in ("succeeded", "failed_status", "error", "refused"):
    WEBHOOK_ATTEMPTS.labels(_outcome)
for _reason in ("gone", "failing"):  # exported at 0: the alert counts the first one
    WEBHOOK_ENDPOINTS_DISABLED.labels(_reason)

# --- the console's records (query_log.py) ------------------------------------------------

#: ``table``: wechatpay_queries (a query's record the database did not take: the query's
#: answer still counts).
RECORDS_LOST = Counter(
    "paylane_console_records_lost_total",
    "Records for the console's timeline that could not be written, by table",
    ["table"],
)
