"""Notifier metrics (Prometheus, served on ``/metrics``)."""

from prometheus_client import Counter, Gauge

#: ``transport``: ws, sse.
CONNECTIONS = Gauge(
    "paylane_notifier_connections", "Clients connected to this replica, by transport", ["transport"]
)
PUSHES = Counter(
    "paylane_notifier_pushes_total", "Messages pushed to clients, by message type", ["type"]
)
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
