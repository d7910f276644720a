"""paylane's entitlement service (docs/database.md, "The entitlement rule")."""

#: The entitlement service's name in the shared ``inbox`` table (``consumer``: the
#: deliveries it applied) and ``outbox`` table (``producer``: the events it staged).
INBOX_CONSUMER = "entitlement"
OUTBOX_PRODUCER = "entitlement"
