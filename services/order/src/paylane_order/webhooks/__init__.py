"""Webhooks to the backend, Standard Webhooks 1.0 (docs/webhooks.md).

The order service consumes the events a backend may subscribe to from its durable queue
``order.webhooks`` and, in one transaction per event, writes one delivery row per
subscribed endpoint (``webhook_deliveries``, unique per event and endpoint) before it
acks. A delivery loop in every replica claims due rows (``FOR UPDATE SKIP LOCKED``, then a
lease), signs the event envelope and POSTs it, and records each attempt
(``webhook_attempts``). A replica that dies mid-send leaves a row whose lease runs out:
another replica sends it again (at least once; the ``webhook-id`` lets the receiver drop
the copy).

- :mod:`.settings`: ``WEBHOOK_*``; :mod:`.types`: the event types an endpoint may subscribe
  to; :mod:`.signing`: secrets and signatures; :mod:`.ssrf`: where a webhook may go;
  :mod:`.store`: the tables; :mod:`.dispatcher`: the consumer and the delivery loop;
  :mod:`.routes`: ``POST/GET/DELETE /webhooks/endpoints``.
"""
