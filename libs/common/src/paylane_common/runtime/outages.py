"""Infrastructure failure is not the message's fault.

A message whose handling fails because MySQL is unreachable, stalls or has turned
read-only must not use up its attempts and land in a DLQ: it waits, unchanged, until the
database is back, however long that takes. A failure is told apart in two steps:

1. :func:`may_be_outage`: the exception is of a kind an outage raises (a lost or refused
   connection, a timeout, a read-only server, …) rather than the message's own (a
   constraint, a validation, a bug). Lock-wait timeouts and deadlocks are
   :func:`is_contention`: tried again without counting an attempt, no outage.
2. :meth:`Dependency.confirm_down`: the dependency is probed at once. Only when the probe
   fails too is it an outage; when the probe answers, the failure was the message's after
   all and takes the ordinary retry path (so a WeChat Pay timeout inside a handler, say,
   is never mistaken for a database outage).

While a dependency is down one prober per process probes it with backoff (one log line a
probe), ``/readyz`` says why the process is not ready, and every worker that met the
outage waits in :meth:`Dependency.wait_up`; the consumers stop taking deliveries
meanwhile (consumer.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable

import aiormq
import pymysql
import structlog
from aio_pika.exceptions import AMQPError
from tenacity import AsyncRetrying, RetryCallState, wait_exponential_jitter

from paylane_common.runtime.exceptions import PublishError

log = structlog.get_logger(__name__)

#: Server errors of an outage: too many connections, shutting down, net read/write errors,
#: the connection killed or timed out, a statement timeout, the server read-only (1290
#: ``--read-only``, 1792 read-only transaction, 1836 read-only mode), access denied at
#: connect (credentials rotated mid-flight), and the client's own 2xxx connection errors.
_OUTAGE_CODES = frozenset(
    {1040, 1044, 1045, 1053, 1152, 1153, 1158, 1159, 1160, 1161, 1290, 1792, 1836, 1927}
    | {1969, 3024, 4031}
)
_CONTENTION_CODES = frozenset({1205, 1213})  # lock wait timeout, deadlock


class NotReady(Exception):
    """A readiness check's answer that ``/readyz`` shows as it is (no secret in it)."""


def _mysql_code(exc: BaseException) -> int | None:
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def is_contention(exc: BaseException) -> bool:
    """A deadlock victim or a lock-wait timeout: the database works, try again."""
    return _mysql_code(exc) in _CONTENTION_CODES


def may_be_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is of a kind an unreachable, stalled or read-only dependency raises."""
    code = _mysql_code(exc)
    if code is not None:
        return code in _OUTAGE_CODES or 2000 <= code < 3000 or code == 0
    if isinstance(exc, pymysql.err.InterfaceError):  # the connection was already closed
        return True
    return isinstance(
        exc, TimeoutError | ConnectionError | OSError | AMQPError | aiormq.AMQPError | PublishError
    )


def describe(exc: BaseException) -> str:
    """A short reason for logs and ``/readyz``."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


class Dependency:
    """One dependency (``mysql``, ``rabbitmq``) as this process's workers see it: up, or
    down with a reason until one prober finds it answering again."""

    def __init__(
        self,
        name: str,
        probe: Callable[[], Awaitable[None]],
        *,
        first_delay_s: float = 0.5,
        max_delay_s: float = 10.0,
    ) -> None:
        self.name = name
        self._probe = probe
        self._first_delay_s = first_delay_s
        self._max_delay_s = max_delay_s
        self._up = asyncio.Event()
        self._up.set()
        self._reason = ""
        self._down_since = 0.0
        self._prober: asyncio.Task[None] | None = None
        self._confirming: asyncio.Task[str | None] | None = None

    @property
    def up(self) -> bool:
        return self._up.is_set()

    @property
    def reason(self) -> str:
        """Why it is down (``""`` while up)."""
        return "" if self.up else f"{self.name} down: {self._reason}"

    async def confirm_down(self, exc: BaseException) -> bool:
        """Whether ``exc`` is this dependency's outage: already known, or a probe made now
        fails as well. Starts the prober on a new outage."""
        if not self.up:
            return True
        if not may_be_outage(exc):
            return False
        # One probe at a time: a whole prefetch window failing at once asks once.
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.create_task(self._probe_once())
        probe_error = await asyncio.shield(self._confirming)
        if probe_error is None:
            return False
        self._mark_down(f"{describe(exc)}; probe: {probe_error}")
        return True

    async def _probe_once(self) -> str | None:
        """None when the dependency answers, else why not."""
        try:
            await self._probe()
        except Exception as exc:
            return describe(exc)
        return None

    async def wait_up(self) -> None:
        await self._up.wait()

    async def check(self) -> None:
        """The readiness check: down while an outage lasts, else a probe of its own."""
        if not self.up:
            raise NotReady(self._reason)  # shown under the dependency's own name
        await self._probe()

    async def close(self) -> None:
        tasks = [t for t in (self._prober, self._confirming) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._prober = self._confirming = None

    def _mark_down(self, reason: str) -> None:
        if not self.up:
            return
        self._up.clear()
        self._reason = reason
        self._down_since = time.monotonic()
        log.error("dependency_down", dependency=self.name, reason=reason)
        # A context of its own: not the log context of the message that met the outage.
        self._prober = asyncio.create_task(
            self._probe_until_up(), name=f"probe-{self.name}", context=contextvars.Context()
        )

    async def _probe_until_up(self) -> None:
        def logged(state: RetryCallState) -> None:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            log.warning(
                "dependency_probe_failed",
                dependency=self.name,
                attempt=state.attempt_number,
                error=describe(error) if error is not None else "",
                next_probe_in_s=round(state.upcoming_sleep, 1),
            )

        async for attempt in AsyncRetrying(
            wait=wait_exponential_jitter(
                multiplier=self._first_delay_s, max=self._max_delay_s, jitter=self._first_delay_s
            ),
            before_sleep=logged,
        ):
            with attempt:
                await self._probe()
        down_for = time.monotonic() - self._down_since
        log.warning("dependency_up", dependency=self.name, down_for_s=round(down_for, 1))
        self._reason = ""
        self._up.set()
