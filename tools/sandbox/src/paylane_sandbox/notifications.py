"""Notifications to the merchant's ``notify_url``, delivered as WeChat Pay delivers them.

Success is HTTP 200 or 204 only. Anything else (another status, a timeout, a refused
connection) is retried on WeChat's schedule, scaled by ``SANDBOX_TIME_FACTOR``; every
retry carries the same notification ``id`` and body, freshly signed. The switches in
force when a notification is created decide whether it is dropped, delayed, duplicated
or held back for reordering.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from paylane_common.wechatpay import SIGNTEST_PREFIX, build_notification

from .background import Background
from .metrics import NOTIFICATION_ATTEMPTS
from .signer import PlatformSigner
from .switches import SwitchBoard
from .timefmt import rfc3339, rfc3339_ms

log = structlog.get_logger(__name__)

#: WeChat Pay's retry intervals after a failed delivery (15 retries, ~24 h 4 min).
RETRY_SCHEDULE = "15s 15s 30s 3m 10m 20m 30m 30m 30m 60m 3h 3h 3h 6h 6h"
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
RETRY_SCHEDULE_S = tuple(int(step[:-1]) * _UNIT_S[step[-1]] for step in RETRY_SCHEDULE.split())
USER_AGENT = "Mozilla/4.0 (paylane-sandbox; WeChat Pay APIv3 emulator)"
#: WeChat Cloud Hosting redelivers a container callback not answered ``errcode`` 0 for up
#: to two days: WeChat Pay's schedule, then every 6 h to 48 h.
CONTAINER_RETRY_SCHEDULE_S = RETRY_SCHEDULE_S + (21600,) * 4


@dataclass
class Attempt:
    at: float
    copy: int  # 0: the notification's own delivery chain; 1+: a duplicate copy
    status: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        outcome = {"status": self.status} if self.error is None else {"error": self.error}
        return {"at": rfc3339_ms(self.at), "copy": self.copy, **outcome}


@dataclass
class Notification:
    id: str
    event_type: str
    summary: str
    url: str
    resource: dict[str, Any]
    body: bytes
    created_at: float
    out_trade_no: str | None = None
    out_refund_no: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    delivered: bool = False
    dropped: bool = False
    held: bool = False
    finished: bool = False  # no retry pending any more
    probe: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_type": self.event_type,
            "summary": self.summary,
            "out_trade_no": self.out_trade_no,
            "out_refund_no": self.out_refund_no,
            "url": self.url,
            "create_time": rfc3339(self.created_at),
            "attempts": [a.to_json() for a in self.attempts],
            "delivered": self.delivered,
            "dropped": self.dropped,
            "held": self.held,
            "finished": self.finished,
            "probe": self.probe,
            "resource": self.resource,
        }


@dataclass(frozen=True)
class _Plan:
    """The switches of one notification, fixed when it is created."""

    delay_s: float
    duplicate: int
    gap_s: float
    concurrent: bool


class NotificationSender:
    def __init__(
        self,
        signer: PlatformSigner,
        switches: SwitchBoard,
        apiv3_key: str,
        *,
        time_factor: float,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self._switches = switches
        self._apiv3_key = apiv3_key
        self.time_factor = time_factor
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._tasks = Background()
        self._held: list[tuple[Notification, _Plan]] = []
        self._session: aiohttp.ClientSession | None = None
        self._changed = asyncio.Condition()
        self.records: list[Notification] = []

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})

    async def close(self) -> None:
        await self._tasks.close()
        if self._session is not None:
            await self._session.close()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds; re-checked after every recorded attempt.
        For in-process tests (TimeoutError when it does not happen in time)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def _touch(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def reset(self) -> None:
        self._tasks.cancel_all()
        self._held.clear()
        self.records.clear()

    def _build(
        self,
        event_type: str,
        original_type: str,
        summary: str,
        resource: Mapping[str, Any],
        url: str,
    ) -> Notification:
        now = self._clock()
        event_id = f"EV-{uuid.uuid4().hex[:24].upper()}"
        _, body = build_notification(
            event_id=event_id,
            event_type=event_type,
            resource_plaintext=resource,
            original_type=original_type,
            apiv3_key=self._apiv3_key,
            signing_key=self._signer.private_key,
            serial=self._signer.public_key_id,  # headers are made afresh per attempt
            timestamp=int(now),
            summary=summary,
        )
        return Notification(event_id, event_type, summary, url, dict(resource), body, now)

    def submit(
        self,
        event_type: str,
        original_type: str,
        summary: str,
        resource: Mapping[str, Any],
        url: str,
        *,
        out_trade_no: str | None = None,
        out_refund_no: str | None = None,
    ) -> Notification:
        """Record a notification and deliver it in the background, as the switches say."""
        note = self._build(event_type, original_type, summary, resource, url)
        note.out_trade_no, note.out_refund_no = out_trade_no, out_refund_no
        self.records.append(note)
        if self._switches.take_drop():
            note.dropped = note.finished = True
            NOTIFICATION_ATTEMPTS.labels("dropped").inc()
            log.info("notification_dropped", event_id=note.id, event_type=event_type)
            return note
        switches = self._switches.current
        plan = _Plan(
            switches.delay_s,
            switches.duplicate,
            switches.duplicate_gap_s,
            switches.concurrent_duplicate,
        )
        if switches.reorder:
            note.held = True
            self._held.append((note, plan))
            if len(self._held) >= 2:
                self.flush()
            return note
        self._tasks.spawn(self._deliver(note, plan), f"notify {note.id}")
        return note

    def flush(self) -> int:
        """Release the held notifications, newest first; returns how many."""
        batch, self._held = self._held[::-1], []
        for note, _ in batch:
            note.held = False
        if batch:
            self._tasks.spawn(self._release(batch), "notify release")
        return len(batch)

    @property
    def held(self) -> int:
        return len(self._held)

    async def _release(self, batch: list[tuple[Notification, _Plan]]) -> None:
        # One after the other, so that the merchant sees them in exactly this order.
        for note, plan in batch:
            ok = await self._first(note, plan)
            self._tasks.spawn(self._retry(note, ok), f"notify {note.id}")

    async def _deliver(self, note: Notification, plan: _Plan) -> None:
        await self._retry(note, await self._first(note, plan))

    async def _first(self, note: Notification, plan: _Plan) -> bool:
        if plan.delay_s:
            await asyncio.sleep(plan.delay_s)
        if plan.concurrent:
            ok = any(await asyncio.gather(self._post(note, 0), self._post(note, 1)))
        else:
            ok = await self._post(note, 0)
        first_copy = 2 if plan.concurrent else 1
        for k in range(plan.duplicate):
            self._tasks.spawn(
                self._copy(note, first_copy + k, plan.gap_s * (k + 1)), f"notify {note.id} copy"
            )
        return ok

    async def _copy(self, note: Notification, copy: int, after_s: float) -> None:
        await asyncio.sleep(after_s)
        await self._post(note, copy)

    async def _retry(self, note: Notification, ok: bool) -> None:
        for interval in RETRY_SCHEDULE_S:
            if ok:
                break
            await asyncio.sleep(interval * self.time_factor)
            ok = await self._post(note, 0)
        note.finished = True
        await self._touch()
        if not ok:
            log.warning("notification_gave_up", event_id=note.id, attempts=len(note.attempts))

    async def _send(self, url: str, headers: dict[str, str], body: bytes) -> int:
        if self._session is None:
            raise RuntimeError("notification sender not started")
        async with self._session.post(
            url, data=body, headers=headers, timeout=self._timeout
        ) as response:
            await response.read()
            return response.status

    async def _attempt(self, note: Notification, copy: int, headers: dict[str, str]) -> Attempt:
        attempt = Attempt(at=self._clock(), copy=copy)
        note.attempts.append(attempt)
        try:
            attempt.status = await self._send(note.url, headers, note.body)
        except TimeoutError:
            attempt.error = f"timeout after {self._timeout.total}s"
        except aiohttp.ClientError as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"[:300]
        return attempt

    async def _post(self, note: Notification, copy: int) -> bool:
        headers = {**self._signer.headers(note.body), "Content-Type": "application/json"}
        attempt = await self._attempt(note, copy, headers)
        ok = attempt.status in (200, 204)
        note.delivered = note.delivered or ok
        await self._touch()
        outcome = "delivered" if ok else ("failed" if attempt.error else "rejected")
        NOTIFICATION_ATTEMPTS.labels(outcome).inc()
        log.info(
            "notification_attempt",
            event_id=note.id,
            event_type=note.event_type,
            copy=copy,
            status=attempt.status,
            error=attempt.error,
        )
        return ok

    # -- WeChat Cloud Hosting's container callbacks ----------------------------------------

    def submit_container(
        self,
        event_type: str,
        summary: str,
        fields: Mapping[str, Any],
        url: str,
        headers: Mapping[str, str],
        *,
        out_trade_no: str | None = None,
        out_refund_no: str | None = None,
    ) -> Notification:
        """A result the platform delivers to a container: the camelCase ``fields`` as
        JSON, unsigned, with the platform's ``X-WX-*`` ``headers``; delivered once the
        container answers 200 ``{"errcode": 0}``, else retried for up to two days (scaled
        by ``SANDBOX_TIME_FACTOR``)."""
        body = json.dumps(dict(fields), ensure_ascii=False).encode()
        note = Notification(
            f"CH-{uuid.uuid4().hex[:24].upper()}",
            event_type,
            summary,
            url,
            dict(fields),
            body,
            self._clock(),
            out_trade_no=out_trade_no,
            out_refund_no=out_refund_no,
        )
        self.records.append(note)
        sent = {**headers, "Content-Type": "application/json"}
        self._tasks.spawn(self._deliver_container(note, sent), f"container {note.id}")
        return note

    async def _deliver_container(self, note: Notification, headers: dict[str, str]) -> None:
        ok = await self._post_container(note, headers)
        for interval in CONTAINER_RETRY_SCHEDULE_S:
            if ok:
                break
            await asyncio.sleep(interval * self.time_factor)
            ok = await self._post_container(note, headers)
        note.finished = True
        await self._touch()
        if not ok:
            log.warning("container_callback_gave_up", event_id=note.id)

    async def _post_container(self, note: Notification, headers: dict[str, str]) -> bool:
        if self._session is None:
            raise RuntimeError("notification sender not started")
        attempt = Attempt(at=self._clock(), copy=0)
        note.attempts.append(attempt)
        ok = False
        try:
            async with self._session.post(
                note.url, data=note.body, headers=headers, timeout=self._timeout
            ) as response:
                attempt.status = response.status
                answer = await response.read()
            try:
                parsed = json.loads(answer)
                ok = response.status == 200 and isinstance(parsed, dict)
                ok = ok and parsed.get("errcode") == 0
                if not ok:
                    attempt.error = f"answered {answer[:120].decode(errors='replace')}"
            except ValueError:
                attempt.error = "answered a body that is not JSON"
        except TimeoutError:
            attempt.error = f"timeout after {self._timeout.total}s"
        except aiohttp.ClientError as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"[:300]
        note.delivered = note.delivered or ok
        await self._touch()
        NOTIFICATION_ATTEMPTS.labels("delivered" if ok else "rejected").inc()
        log.info(
            "container_callback_attempt",
            event_id=note.id,
            status=attempt.status,
            error=attempt.error,
        )
        return ok

    async def signtest(
        self,
        event_type: str,
        original_type: str,
        resource: Mapping[str, Any],
        url: str,
        *,
        out_trade_no: str | None = None,
    ) -> Notification:
        """One probe with a ``WECHATPAY/SIGNTEST/`` signature, never retried."""
        note = self._build(event_type, original_type, "签名探测", resource, url)
        note.out_trade_no, note.probe = out_trade_no, True
        self.records.append(note)
        headers = {**self._signer.headers(note.body), "Content-Type": "application/json"}
        junk = base64.b64encode(secrets.token_bytes(192)).decode("ascii")
        headers["Wechatpay-Signature"] = SIGNTEST_PREFIX + junk
        await self._attempt(note, 0, headers)
        note.finished = True
        await self._touch()
        NOTIFICATION_ATTEMPTS.labels("probe").inc()
        return note
