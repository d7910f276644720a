"""Versioned migrations (yoyo) for the tables of docs/database.md, run by ``paylane migrate``."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import pymysql
from yoyo import default_migration_table, read_migrations
from yoyo.backends.core.mysql import MySQLBackend
from yoyo.connections import parse_uri

from paylane_common.runtime.settings import MySQLParams
from paylane_common.storage.mysql_tls import DIAGNOSIS, MySQLTls, may_need_tls, tls_errors, tls_only


def connect(dsn: MySQLParams, **options: Any) -> pymysql.Connection[Any]:
    """A pymysql connection to ``dsn`` (its TLS included), for the migrator and the
    cutover; a TLS failure is a ConfigError naming ``MYSQL_URL`` (mysql_tls.py)."""
    try:
        with tls_errors(dsn.tls):
            return _connect(dsn, dsn.tls, options)
    except pymysql.err.OperationalError as exc:
        if may_need_tls(exc, dsn.tls):
            try:
                _connect(dsn, DIAGNOSIS, options).close()
            except Exception:
                raise exc from None  # a wrong password, or not there: as it was
            raise tls_only(dsn.tls) from exc
        raise


def _connect(dsn: MySQLParams, tls: MySQLTls, options: dict[str, Any]) -> pymysql.Connection[Any]:
    return pymysql.connect(
        host=dsn.host,
        port=dsn.port,
        user=dsn.user,
        password=dsn.password,
        connect_timeout=5,
        **tls.pymysql_args(),
        **options,
    )


def _backend(dsn: MySQLParams) -> MySQLBackend:
    """yoyo's MySQL backend, connected by :func:`connect` (yoyo's own URL parameters
    cannot carry an ``ssl.SSLContext``)."""

    class Backend(MySQLBackend):  # type: ignore[misc]
        def connect(self, dburi: Any) -> pymysql.Connection[Any]:
            return connect(dsn, database=dsn.database)

    backend = Backend(parse_uri(f"mysql://{dsn.host}/{dsn.database}"), default_migration_table)
    backend.init_database()
    return backend


def create_database(dsn: MySQLParams) -> None:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE DATABASE IF NOT EXISTS `{dsn.database}` "
                "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
    finally:
        conn.close()


#: The migrations' folder, beside this module.
MIGRATIONS = files("paylane_common.storage") / "migrations"


def migrate(url: str) -> list[str]:
    """Create the database if needed and apply pending migrations; return their ids."""
    dsn = MySQLParams.from_url(url)
    create_database(dsn)
    backend = _backend(dsn)
    migrations = read_migrations(str(MIGRATIONS))
    if not migrations:  # a wrong path reads as "nothing to do": never let it pass
        raise RuntimeError(f"no migrations found in {MIGRATIONS}")
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


class CutoverRefused(Exception):
    """The cutover would let an order be granted twice: ``orders`` (``(out_trade_no,
    paid_at)``) paylane already announced would fall before it, or it moves earlier than
    the one in force (``earlier_than``)."""

    def __init__(
        self,
        orders: list[tuple[str, datetime | None]],
        earlier_than: str | None = None,
    ):
        if earlier_than is not None:
            why = f"it is earlier than the cutover in force ({earlier_than})"
        else:
            why = f"{len(orders)} order(s) paylane announced were paid before it"
        super().__init__(why)
        self.orders = orders
        self.earlier_than = earlier_than


def cutover(
    url: str, at: datetime | None = None, *, force: bool = False, if_unset: bool = False
) -> datetime | None:
    """Set ``paylane_meta.effects_since`` (sweep.py in the order service): paylane applies
    the effects of orders another writer settled from this moment (default: now, UTC),
    the one at which the cloud function starts calling paylane instead of the backend
    before it. Until the first cutover paylane applies none (``paylane migrate`` does not
    set it). Returns the moment set.

    Refuses (:class:`CutoverRefused`, unless ``force``) when paylane has already announced
    orders another writer settled before that moment: the backend before paylane may have
    granted them too, and moving the cutover past them cannot take a grant back. An
    operator checks those orders first. Also refused: moving it earlier than the one in
    force (the sweep would grant what the old backend settled in between).

    ``if_unset``: only where no cutover was made yet (``make run``); returns None when
    there was one."""
    moment = (at or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    dsn = MySQLParams.from_url(url)
    conn = connect(
        dsn,
        database=dsn.database,
        autocommit=True,
        # paid_at / updated_at are TIMESTAMPs: compared in UTC, as the services read them.
        init_command="SET time_zone = '+00:00'",
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT value FROM paylane_meta WHERE name = 'effects_since'")
            current = cur.fetchone()
            if current is not None and if_unset:
                return None
            if current is not None and not force and moment < datetime.fromisoformat(current[0]):
                raise CutoverRefused([], earlier_than=current[0])
            cur.execute(
                "SELECT o.out_trade_no, o.paid_at FROM payment_orders o"
                " WHERE o.paid_event_at IS NOT NULL AND COALESCE(o.paid_at, o.updated_at) < %s"
                " AND EXISTS (SELECT 1 FROM payment_logs l WHERE l.out_trade_no = o.out_trade_no"
                # paylane's kind (a row from before migration 0008 has it as its type)
                " AND COALESCE(l.kind, l.type) = 'paid_elsewhere')"
                " ORDER BY o.paid_at DESC LIMIT 100",
                (moment,),
            )
            announced = [(row[0], row[1]) for row in cur.fetchall()]
            if announced and not force:
                raise CutoverRefused(announced)
            cur.execute(
                "INSERT INTO paylane_meta (name, value) VALUES ('effects_since', %s)"
                " ON DUPLICATE KEY UPDATE value = VALUES(value)",
                (moment.isoformat(sep=" ", timespec="microseconds"),),
            )
    finally:
        conn.close()
    return moment
