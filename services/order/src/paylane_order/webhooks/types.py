"""The event types a webhook endpoint may subscribe to: routing keys of the exchange
``paylane``, sent under the same name (docs/webhooks.md, "Events")."""

from __future__ import annotations

from paylane_common.broker.topology import ORDER_WEBHOOKS

#: Every type a webhook carries, in the order the docs list them: the routing keys the
#: queue ``order.webhooks`` may be bound to (``fulfilment.succeeded`` / ``.failed``
#: included, which the order service publishes for a business order's fulfilment); those
#: some endpoint subscribes to are (paylane_order.bindings).
WEBHOOK_EVENTS: tuple[str, ...] = ORDER_WEBHOOKS.optional_keys


def expand(names: list[str]) -> tuple[str, ...]:
    """``names`` (types, or a family as ``order.*``) as the types they name, in the order
    of :data:`WEBHOOK_EVENTS`; raises ValueError naming the first unknown one."""
    chosen: set[str] = set()
    for name in names:
        if name.endswith(".*"):
            family = [t for t in WEBHOOK_EVENTS if t.startswith(name[:-1])]
            if not family:
                raise ValueError(f"{name!r} names no event type a webhook carries")
            chosen.update(family)
        elif name in WEBHOOK_EVENTS:
            chosen.add(name)
        else:
            raise ValueError(
                f"{name!r} is not an event type a webhook carries: one of"
                f" {', '.join(WEBHOOK_EVENTS)} (or a family, as 'order.*')"
            )
    return tuple(t for t in WEBHOOK_EVENTS if t in chosen)
