"""Notifier metrics (Prometheus, served on ``/metrics``)."""

from prometheus_client import Counter, Gauge

#: ``transport``: ws, sse.
CONNECTIONS = Gauge(
    "paylane_notifier_connections", "Clients connected to this replica, by transport", ["transport"]
)
PUSHES = Counter(
    "paylane_notifier_pushes_total", "Messages pushed to clients, by message type", ["type"]
)
#: ``why``: buffer_full (more pushes buffered than ``NOTIFIER_PUSH_LOG_BUFFER``),
#: database (the write failed: those rows are not retried).
PUSH_RECORDS_DROPPED = Counter(
    "paylane_notifier_push_records_dropped_total",
    "Records of pushes (notifier_pushes, the console's timeline) not written, by why",
    ["why"],
)
for _why in ("buffer_full", "database"):
    PUSH_RECORDS_DROPPED.labels(_why)
DROPPED_CLIENTS = Counter(
    "paylane_notifier_dropped_clients_total",
    "Clients disconnected because they fell too far behind (their queue overflowed)",
)
REFUSED = Counter(
    "paylane_notifier_refused_connections_total",
    "Clients refused at connect because a cap was reached, by cap (per_user, replica)",
    ["cap"],
)
EXPIRED = Counter(
    "paylane_notifier_expired_streams_total",
    "Streams ended because their token expired (the client reconnects with a fresh one)",
)
