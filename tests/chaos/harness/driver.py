"""The load driver: plays WeChat Pay, delivering signed notifications to ingress at a
steady rate, some of them twice, each retried until answered 2xx."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from tests.support.stack_api import Order
from tests.support.wechat import FakeWechat


@dataclass(eq=False)
class Notification:
    order: Order
    transaction_id: str
    event_id: str
    headers: dict[str, str]
    body: bytes
    acked: bool = False
    statuses: Counter[str] = field(default_factory=Counter)


@dataclass
class DriverStats:
    sent: int = 0  # notifications (one per order), first delivery started
    duplicates: int = 0  # extra deliveries of the same notification id
    concurrent_duplicates: int = 0
    posts: int = 0
    ok: int = 0  # 2xx answers
    unavailable: int = 0  # 503
    errors: int = 0  # connection refused / reset / timeout, other 5xx
    rejected: int = 0  # 4xx: never expected here
    retried: int = 0  # deliveries sent again after a failure
    finished: bool = False  # every delivery got its 2xx (or gave up)
    #: The longest WeChat went without any 2xx, from the stream's start to its last 2xx.
    longest_ack_gap: float = 0.0
    last_ack_at: float | None = None

    def acked_now(self) -> None:
        now = time.monotonic()
        if self.last_ack_at is not None:
            self.longest_ack_gap = max(self.longest_ack_gap, now - self.last_ack_at)
        self.last_ack_at = now


#: WeChat's 15s/15s/30s/3m/10m/… at a 60th, capped at a second.
RETRY_DELAYS = (0.25, 0.25, 0.5, 1.0)


class WechatDriver:
    """Plays WeChat Pay: one signed TRANSACTION.SUCCESS per order at ``rate`` per second,
    ~``duplicate_share`` of them delivered twice (half concurrently, as WeChat's second
    network path does, half a little later), each delivery retried until a 2xx."""

    def __init__(
        self,
        ingress_url: str,
        wechat: FakeWechat,
        orders: list[Order],
        *,
        rate: float = 30.0,
        duplicate_share: float = 0.3,
        give_up_after: float = 60.0,
        seed: int | None = None,
    ) -> None:
        self.url = f"{ingress_url}/notify/wechatpay"
        self.rate = rate
        self.give_up_after = give_up_after
        #: Which notifications are duplicated and how: printed, to replay a run.
        self.seed = random.randrange(2**32) if seed is None else seed
        self.rng = random.Random(self.seed)
        self.stats = DriverStats()
        self.notifications: list[Notification] = []
        for order in orders:
            txn = f"42{uuid.uuid4().int % 10**26:026d}"
            resource = wechat.transaction(order.out_trade_no, order.amount_total, txn)
            headers, body = wechat.notify(resource)
            event_id = json.loads(body)["id"]
            self.notifications.append(Notification(order, txn, event_id, headers, body))
        self.duplicated = set(
            self.rng.sample(self.notifications, round(len(orders) * duplicate_share))
        )
        self._changed = asyncio.Condition()
        self._ending = False

    def end(self) -> None:
        """End the stream early: no further notification is sent (deliveries under way
        finish); the orders not reached are left out (:attr:`notifications`). For a
        scenario that lasts as long as it takes, with orders enough to outlast it."""
        self._ending = True

    @property
    def acked(self) -> list[Notification]:
        return [n for n in self.notifications if n.acked]

    def summary(self) -> dict[str, int]:
        s = self.stats
        return {
            "sent": s.sent,
            "duplicates": s.duplicates,
            "concurrent_dups": s.concurrent_duplicates,
            "posts": s.posts,
            "2xx": len(self.acked),
            "503": s.unavailable,
            "errors": s.errors,
            "4xx": s.rejected,
            "retried": s.retried,
        }

    async def wait_until(
        self, what: str, predicate: Callable[[DriverStats], bool], timeout: float = 30
    ) -> None:
        """Until the driver's counters satisfy ``predicate`` (bounded)."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: predicate(self.stats))
        except TimeoutError:
            raise TimeoutError(f"driver: {what} not within {timeout}s: {self.summary()}") from None

    async def wait_sent(self, count: int, timeout: float = 30) -> None:
        await self.wait_until(f"{count} notifications sent", lambda s: s.sent >= count, timeout)

    async def wait_acks(self, more: int, timeout: float = 30) -> None:
        """Until ``more`` further 2xx answers (or the stream is over)."""
        wanted = self.stats.ok + more
        await self.wait_until(
            f"{more} more 2xx answers", lambda s: s.ok >= wanted or s.finished, timeout
        )

    async def _bump(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=5)  # WeChat's deadline
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            deliveries: list[asyncio.Task[None]] = []
            started = self.stats.last_ack_at = time.monotonic()
            for i, notification in enumerate(self.notifications):
                pause = started + i / self.rate - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)  # the stream's pace
                if self._ending:
                    del self.notifications[i:]  # never sent: not part of this stream
                    break
                deliveries.append(asyncio.create_task(self._deliver(http, notification)))
                self.stats.sent += 1
                if notification in self.duplicated:
                    self.stats.duplicates += 1
                    if self.rng.random() < 0.5:
                        self.stats.concurrent_duplicates += 1
                        delay = 0.0
                    else:
                        delay = self.rng.uniform(0.1, 1.5)
                    deliveries.append(asyncio.create_task(self._deliver(http, notification, delay)))
                await self._bump()
            await asyncio.gather(*deliveries)
        self.stats.finished = True
        await self._bump()

    async def _deliver(
        self, http: aiohttp.ClientSession, notification: Notification, delay: float = 0.0
    ) -> None:
        if delay:
            await asyncio.sleep(delay)  # the second network path, a little later
        deadline = time.monotonic() + self.give_up_after
        for attempt in itertools.count():
            if attempt:
                self.stats.retried += 1
            outcome = await self._post(http, notification)
            notification.statuses[outcome] += 1
            if outcome == "2xx":
                notification.acked = True
                await self._bump()
                return
            if outcome == "4xx" or time.monotonic() >= deadline:
                await self._bump()
                return
            await self._bump()
            await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])

    async def _post(self, http: aiohttp.ClientSession, notification: Notification) -> str:
        self.stats.posts += 1
        try:
            async with http.post(
                self.url, data=notification.body, headers=notification.headers
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            self.stats.errors += 1
            return "error"
        if 200 <= status < 300:
            self.stats.ok += 1
            self.stats.acked_now()
            return "2xx"
        if status == 503:
            self.stats.unavailable += 1
            return "503"
        if 400 <= status < 500:
            self.stats.rejected += 1
            return "4xx"
        self.stats.errors += 1
        return "error"
