"""Which failures may be an outage (then probed) and which are the message's own."""

from __future__ import annotations

import asyncio

import pydantic
import pymysql
import pytest

from paylane_common.runtime.exceptions import PublishError
from paylane_common.runtime.outages import (
    Dependency,
    NotReady,
    describe,
    is_contention,
    may_be_outage,
)


@pytest.mark.parametrize(
    "exc",
    [
        pymysql.err.OperationalError(2003, "Can't connect to MySQL server"),
        pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"),
        pymysql.err.OperationalError(1290, "running with the --read-only option"),
        pymysql.err.OperationalError(1792, "Cannot execute statement in a READ ONLY transaction"),
        pymysql.err.OperationalError(1040, "Too many connections"),
        pymysql.err.OperationalError(1927, "Connection was killed"),
        pymysql.err.InterfaceError(0, ""),
        TimeoutError(),
        ConnectionResetError(104, "Connection reset by peer"),
        PublishError("no confirm"),
    ],
    ids=describe,
)
def test_what_an_outage_raises_may_be_one(exc: BaseException) -> None:
    assert may_be_outage(exc) and not is_contention(exc)


@pytest.mark.parametrize(
    "exc",
    [
        pymysql.err.IntegrityError(1062, "Duplicate entry"),
        pymysql.err.DataError(1406, "Data too long"),
        pymysql.err.ProgrammingError(1146, "Table doesn't exist"),
        pymysql.err.OperationalError(1054, "Unknown column"),
        ValueError("bad amount"),
        KeyError("out_trade_no"),
    ],
    ids=describe,
)
def test_the_message_s_own_failures_are_not(exc: BaseException) -> None:
    assert not may_be_outage(exc)


def test_validation_errors_are_the_message_s_own() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        pydantic.TypeAdapter(int).validate_python("x")
    assert not may_be_outage(info.value)


@pytest.mark.parametrize("code", [1205, 1213])
def test_lock_waits_and_deadlocks_are_contention(code: int) -> None:
    exc = pymysql.err.OperationalError(code, "")
    assert is_contention(exc) and not may_be_outage(exc)


async def test_a_failure_is_an_outage_only_when_the_probe_fails_too() -> None:
    answering = True

    async def probe() -> None:
        if not answering:
            raise ConnectionRefusedError("refused")

    database = Dependency("mysql", probe, first_delay_s=0.01, max_delay_s=0.01)
    try:
        assert not await database.confirm_down(ConnectionRefusedError("WeChat Pay refused"))
        assert database.up
        assert not await database.confirm_down(ValueError("the message's own"))
        answering = False
        assert await database.confirm_down(TimeoutError())
        assert not database.up
        with pytest.raises(NotReady, match="TimeoutError; probe: ConnectionRefusedError"):
            await database.check()
        answering = True
        await asyncio.wait_for(database.wait_up(), 5)
        await database.check()
    finally:
        await database.close()
