"""Entitlement service: owns the entitlement columns of ``users`` (docs/database.md)."""

from __future__ import annotations

from aiohttp import web

from paylane_common.broker.topology import ENTITLEMENT_ORDERS
from paylane_common.runtime.service import (
    DB_POOL,
    OUTBOX_RELAY,
    base_app,
    serve,
    use_broker,
    use_consumer,
    use_mysql,
)

from . import OUTBOX_PRODUCER
from .grants import EntitlementApplier
from .settings import EntitlementSettings


def build_app(settings: EntitlementSettings) -> web.Application:
    app = base_app("entitlement", admin_port=settings.admin_port)
    use_broker(app, settings)
    use_mysql(app, settings)
    use_consumer(
        app,
        ENTITLEMENT_ORDERS,
        lambda app: EntitlementApplier(
            app[DB_POOL], settings.catalog, on_commit=app[OUTBOX_RELAY].wake
        ),
        settings,
        outbox_producer=OUTBOX_PRODUCER,
    )
    return app


def main() -> None:
    serve(EntitlementSettings, build_app)
