"""Ingress metrics (docs/metrics.md, generated from these: ``make docs``)."""

from prometheus_client import Counter, Histogram

#: ``route``: wechatpay (``POST /notify/wechatpay``), internal (the cloud function's notify),
#: cloudhosting (``POST /notify/cloudhosting``, WeChat Cloud Hosting's container callback).
NOTIFICATIONS_RECEIVED = Counter(
    "paylane_ingress_notifications_received_total", "Notification requests received", ["route"]
)
NOTIFICATIONS_VERIFIED = Counter(
    "paylane_ingress_notifications_verified_total", "Notifications whose signature verified"
)
#: ``reason``: bad_signature, stale_timestamp, signtest_probe, unknown_serial,
#: expired_certificate, decrypt_failed, too_large, not_json, duplicate_header,
#: malformed_body, empty_body, invalid_resource, broker_unavailable, internal_secret,
#: internal_invalid, cloudhosting_invalid, cloudhosting_headers, and others.
NOTIFICATIONS_REJECTED = Counter(
    "paylane_ingress_notifications_rejected_total", "Notifications rejected, by reason", ["reason"]
)
#: The reasons the alerts (deploy/prometheus) count, exported at 0 from the start so that
#: the first one is an increase.
ALERTED_REASONS = (
    "broker_unavailable",
    "bad_signature",
    "unknown_serial",
    "expired_certificate",
    "decrypt_failed",
)
for _reason in ALERTED_REASONS:
    NOTIFICATIONS_REJECTED.labels(_reason)
#: ``why``: rate (over ``INGRESS_REJECTIONS_PER_S`` this second), busy (too many records
#: waiting for the broker's confirm), broker (the broker did not take it).
REJECTIONS_UNRECORDED = Counter(
    "paylane_ingress_rejections_unrecorded_total",
    "Rejected notifications whose record (notification.rejected) was not published, by why",
    ["why"],
)
for _why in ("rate", "busy", "broker"):
    REJECTIONS_UNRECORDED.labels(_why)
NOTIFICATIONS_ACKED = Counter(
    "paylane_ingress_notifications_acked_total",
    "Notifications acknowledged, by outcome (published, ignored)",
    ["outcome"],
)
#: ``status``: 2xx, 4xx, 5xx.
ACK_SECONDS = Histogram(
    "paylane_ingress_ack_seconds",
    "Time from request start to the answer, by status class",
    ["status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
#: The cloud function's calls (docs/cloud-function.md).
INTERNAL_CALLS = Counter(
    "paylane_ingress_internal_calls_total",
    "Calls of the internal API other than notify, by route and outcome"
    " (published, unauthorized, invalid_request, invalid_json, unavailable, …)",
    ["route", "outcome"],
)
