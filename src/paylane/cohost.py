"""``paylane serve consumers``: the order, entitlement and notifier services in one
process, for a small server (docs/performance.md, "Co-hosted consumers").

The same queues, events, listeners and ports as when each runs alone: only the process
is shared (one interpreter and its libraries in memory instead of three). Issue 31 hoped
it would also cost a payment fewer process wake-ups; measured at saturation it does not
(docs/performance.md), so the Procfile and the deployments keep three processes.

Each service keeps its own settings, broker connection and database pool:
``ORDER__X``, ``ENTITLEMENT__X`` and ``NOTIFIER__X`` give one service its own ``X`` (its
identity, ``MYSQL_URL_FILE`` or ``AMQP_URL_FILE``; its ports), the unprefixed ``X`` the
others.

What it gives up is the isolation of processes: the three share one memory (the
notifier then holds the order service's token-signing key, where alone it never gets
it), one crash stops all three, and ``/metrics`` on each admin port serves the one
process's metrics (scrape one of them: the three give the same numbers).
"""

from __future__ import annotations

from paylane_common.runtime.service import Hosted, serve_together


def hosted() -> list[Hosted]:
    from paylane_entitlement.main import build_app as entitlement_app
    from paylane_entitlement.settings import EntitlementSettings
    from paylane_notifier.main import build_app as notifier_app
    from paylane_notifier.settings import NotifierSettings
    from paylane_order.main import build_app as order_app
    from paylane_order.settings import OrderSettings

    return [
        Hosted("order", OrderSettings, order_app),
        Hosted("entitlement", EntitlementSettings, entitlement_app),
        Hosted("notifier", NotifierSettings, notifier_app),
    ]


def main() -> None:
    serve_together(hosted())
