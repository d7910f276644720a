"""Versioned migrations (yoyo) for the tables of DESIGN §6, run by ``paylane migrate``."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.resources import files
from urllib.parse import quote

import pymysql
from yoyo import get_backend, read_migrations

from .settings import MySQLParams


def create_database(dsn: MySQLParams) -> None:
    conn = pymysql.connect(
        host=dsn.host, port=dsn.port, user=dsn.user, password=dsn.password, connect_timeout=5
    )
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE DATABASE IF NOT EXISTS `{dsn.database}` "
                "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
    finally:
        conn.close()


def migrate(url: str) -> list[str]:
    """Create the database if needed and apply pending migrations; return their ids."""
    dsn = MySQLParams.from_url(url)
    create_database(dsn)
    auth = quote(dsn.user, safe="") + (":" + quote(dsn.password, safe="") if dsn.password else "")
    backend = get_backend(f"mysql://{auth}@{dsn.host}:{dsn.port}/{dsn.database}")
    migrations = read_migrations(str(files("paylane_common") / "migrations"))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def cutover(url: str, at: datetime | None = None) -> datetime:
    """Set ``paylane_meta.effects_since`` (effects.py in the order service): paylane applies
    the effects of orders another writer settled from this moment (default: now, UTC),
    the one at which the cloud function starts calling paylane instead of the backend
    before it. Returns the moment set."""
    moment = (at or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    dsn = MySQLParams.from_url(url)
    conn = pymysql.connect(
        host=dsn.host,
        port=dsn.port,
        user=dsn.user,
        password=dsn.password,
        database=dsn.database,
        connect_timeout=5,
        autocommit=True,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO paylane_meta (name, value) VALUES ('effects_since', %s)"
                " ON DUPLICATE KEY UPDATE value = VALUES(value)",
                (moment.isoformat(sep=" ", timespec="microseconds"),),
            )
    finally:
        conn.close()
    return moment
