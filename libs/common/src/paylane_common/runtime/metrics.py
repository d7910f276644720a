"""Prometheus metrics shared by the services (each process has its own registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

#: ``outcome``: confirmed, timeout, nack, returned, unavailable.
PUBLISH_CONFIRM_SECONDS = Histogram(
    "paylane_publish_confirm_seconds",
    "Time from publish to the broker's confirm, by outcome",
    ["outcome"],
    buckets=_LATENCY_BUCKETS,
)
#: Outcomes the alerts (deploy/prometheus) count. A labelled counter appears only at its
#: first increment, already at 1, and ``increase()`` cannot see that first one: these are
#: exported at 0 from the start (publish outcomes here, consumer outcomes per queue).
PUBLISH_OUTCOMES = ("confirmed", "timeout", "nack", "returned", "unavailable")
ALERTED_CONSUMER_OUTCOMES = (
    "dead_lettered",
    "retried",
    "put_back_outage",
    "needs_review",
    "duplicate_payment",
    "publisher_refused",
)
for _outcome in PUBLISH_OUTCOMES:
    PUBLISH_CONFIRM_SECONDS.labels(_outcome)
#: ``outcome``: what processing did (paid, granted, revoked, refunded, needs_review,
#: duplicate_payment, …), ``duplicate`` (the inbox or the ledger said seen), ``retried``
#: (parked in ``<queue>.retry.<delay>``), ``dead_lettered``, ``requeued`` (the forward to
#: the retry queue or the DLQ itself failed), ``put_back_outage``, ``publisher_refused``
#: (an event type from a broker user that does not publish it).
CONSUMER_MESSAGES = Counter(
    "paylane_consumer_messages_total",
    "Messages handled by a consumer, by queue and outcome "
    "(processed, duplicate, retried, dead_lettered, or a handler's own label)",
    ["queue", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "paylane_consumer_handler_seconds",
    "Time spent handling one message, by queue",
    ["queue"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "paylane_consumer_batch_size",
    "Messages applied together in one transaction, by queue (batches of two or more)",
    ["queue"],
    buckets=(2, 5, 10, 20, 50, 100, 200),
)
CONSUMER_PAUSED = Gauge(
    "paylane_consumer_paused",
    "1 while a database outage pauses the consumer of this queue (it is not ready)",
    ["queue"],
)
#: Set by the order and entitlement consumers; ingress makes the announcements
#: (``INGRESS_BUSY_CPU``, ``INGRESS_BUSY_IN_FLIGHT``).
CONSUMER_YIELDING = Gauge(
    "paylane_consumer_yielding",
    "1 while the consumer waits for ingress to be less busy (pressure.py): a burst",
)
CONSUMER_YIELD_SECONDS = Counter(
    "paylane_consumer_yield_seconds_total",
    "Seconds the consumer waited for ingress to be less busy (pressure.py)",
)
INGRESS_CPU_SHARE = Gauge(
    "paylane_ingress_cpu_share",
    "Ingress's own CPU use over the last tenth of a second, in cores (pressure.py)",
)
INGRESS_BUSY_ANNOUNCEMENTS = Counter(
    "paylane_ingress_busy_announcements_total",
    "Times ingress announced it is busy (CPU use or notifications in flight; pressure.py)",
)
#: The service's own queues and their DLQs, asked of the broker every 15 s; every replica
#: reports the same.
QUEUE_MESSAGES = Gauge(
    "paylane_queue_messages",
    "Messages ready in a queue (a consumer's own queue and its DLQ), as the broker last said",
    ["queue"],
)
QUEUE_CONSUMERS = Gauge(
    "paylane_queue_consumers", "Consumers of a queue, as the broker last said", ["queue"]
)
OUTBOX_BACKLOG = Gauge("paylane_outbox_backlog", "Outbox rows not yet published", ["producer"])
OUTBOX_OLDEST_AGE = Gauge(
    "paylane_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row", ["producer"]
)
OUTBOX_PUBLISHED = Counter(
    "paylane_outbox_published_total", "Outbox rows published and marked", ["producer"]
)
RETENTION_PRUNED = Counter(
    "paylane_retention_pruned_total",
    "Bookkeeping rows deleted after RETENTION_DAYS, by table (inbox, outbox)",
    ["table"],
)
