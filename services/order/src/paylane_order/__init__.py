"""paylane's order service (docs/order-api.md)."""

#: The order service's name in the shared ``inbox`` table (``consumer``: the deliveries
#: it applied) and ``outbox`` table (``producer``: the events it staged).
INBOX_CONSUMER = "order"
OUTBOX_PRODUCER = "order"
