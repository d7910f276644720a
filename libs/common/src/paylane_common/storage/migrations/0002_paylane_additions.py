"""What paylane adds to the shared tables: columns, indexes, one ENUM value. Each is
added only when missing; no existing column is renamed, retyped or dropped and no row of
these tables is written. The fen amounts are generated from the yuan ones, so they are
right for every row whoever wrote it (docs/database.md: the existing system has no fen column)."""

from typing import Any

from yoyo import step

from paylane_common.storage.schema import ADDITIONS, ensure

__depends__ = {"0001_shared_tables"}


def add_what_is_missing(conn: Any) -> None:
    ensure(conn.cursor(), *ADDITIONS)


steps = [step(add_what_is_missing)]
