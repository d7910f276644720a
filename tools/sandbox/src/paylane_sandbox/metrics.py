"""Prometheus metrics of the sandbox (served on ``/metrics`` by paylane_common's base app)."""

from __future__ import annotations

from prometheus_client import Counter

API_REQUESTS = Counter(
    "paylane_sandbox_api_requests_total",
    "WeChat Pay API calls answered by the sandbox, by status code",
    ["status"],
)
NOTIFICATION_ATTEMPTS = Counter(
    "paylane_sandbox_notification_attempts_total",
    "Notification deliveries tried, by outcome (delivered, rejected, failed, dropped, probe)",
    ["outcome"],
)
