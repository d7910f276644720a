"""The webhook consumer (events in, delivery rows out) and the delivery loop (due rows
out to their endpoints, the attempts logged). docs/webhooks.md, "Delivery"."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import aiomysql
import structlog

from paylane_common.contract.events import Envelope, is_refund_claim
from paylane_common.delivery.batching import BatchItem
from paylane_common.runtime.background import BackgroundLoop
from paylane_common.runtime.outages import describe

from .. import metrics
from . import signing, ssrf
from .settings import WebhookSettings, retry_schedule
from .store import Delivery, Settle, WebhookStore

log = structlog.get_logger(__name__)

#: The most of an answer kept in the delivery log.
EXCERPT_CHARS = 500
#: The longest ``Retry-After`` honoured (longer is taken as this).
RETRY_AFTER_MAX_S = 86_400.0
#: A claimed delivery is due again this long after its attempt's timeout: its sender died.
LEASE_MARGIN_S = 30.0
USER_AGENT = "paylane-webhooks/1 (Standard Webhooks)"
#: The outcome of a refund result nobody signed (Cloud Hosting's callback): endpoints get
#: the refund as WeChat Pay confirmed it instead, which the refund consumer publishes.
CLAIM_NOT_FORWARDED = "claim_not_forwarded"


@dataclass(frozen=True)
class WebhookConfig:
    """What the webhook parts read, from the ``WEBHOOK_*`` settings."""

    urls: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    allow_private: bool = False
    disable_after_s: float = 432_000
    schedule_s: tuple[float, ...] = retry_schedule(
        WebhookSettings.model_fields["webhook_retry_schedule_s"].default
    )
    jitter: float = 0.1
    timeout_s: float = 15.0
    endpoint_concurrency: int = 4
    poll_s: float = 1.0

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> WebhookConfig:
        return cls(
            urls=settings.configured_urls(),
            secrets=settings.configured_secrets(),
            allow_private=settings.webhook_allow_private,
            disable_after_s=settings.webhook_disable_after_s,
            schedule_s=retry_schedule(settings.webhook_retry_schedule_s),
            jitter=settings.webhook_retry_jitter,
            timeout_s=settings.webhook_timeout_s,
            endpoint_concurrency=settings.webhook_endpoint_concurrency,
            poll_s=settings.webhook_poll_s,
        )

    def step_s(self, step: int) -> float:
        """The wait after attempt ``step`` (0-based) failed, jittered."""
        base = self.schedule_s[min(step, len(self.schedule_s) - 1)]
        return base * (1 + random.uniform(-self.jitter, self.jitter))


class WebhookIngest:
    """The ``order.webhooks`` consumer's handler: one delivery row per subscribed
    endpoint, committed before the consumer acks; a redelivered event adds none. What
    arrives together is recorded in one transaction (a :class:`BatchHandler`): every
    payment sends two events here, which with no endpoint subscribed need one read."""

    def __init__(self, store: WebhookStore, wake: Any = None):
        self.pool: aiomysql.Pool = store.pool
        self._store = store
        self._wake = wake

    async def __call__(self, envelope: Envelope, data: Any) -> str:
        if is_refund_claim(envelope.event_id, data):
            return CLAIM_NOT_FORWARDED
        added = await self._store.ingest(envelope.event_id, envelope.type, envelope.to_json())
        if added and self._wake is not None:
            self._wake()
        return "webhooks_recorded" if added else "no_new_webhook"

    async def apply_batch(
        self, cur: aiomysql.Cursor, items: Sequence[BatchItem]
    ) -> list[str | None]:
        claims = [is_refund_claim(it.envelope.event_id, it.data) for it in items]
        events = [
            (it.envelope.event_id, it.envelope.type, it.envelope.to_json())
            for it, claim in zip(items, claims, strict=True)
            if not claim
        ]
        added = await self._store.ingest_many(cur, events) if events else 0
        # Rows per event are not told apart by one statement: the batch says whether any.
        outcome = "webhooks_recorded" if added else "no_new_webhook"
        return [CLAIM_NOT_FORWARDED if claim else outcome for claim in claims]

    def after_commit(self, outcomes: Sequence[str]) -> None:
        if "webhooks_recorded" in outcomes and self._wake is not None:
            self._wake()


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` (seconds, or an HTTP date) as seconds from now, at most a day."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value) if value.isdigit() else None
    except ValueError:
        seconds = None
    if seconds is None:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


@dataclass(frozen=True)
class Answer:
    """What one attempt got: an HTTP status, or an error."""

    status: int | None
    excerpt: str | None
    error: str | None
    retry_after_s: float | None
    latency_ms: int
    refused: bool = False


class WebhookDispatcher(BackgroundLoop):
    """Sends due deliveries: every ``poll_s`` and when woken, it claims each due
    endpoint's deliveries up to ``endpoint_concurrency`` in flight for it in this replica,
    so an endpoint that is slow or down holds only its own."""

    task_name = "webhook-dispatcher"

    def __init__(self, store: WebhookStore, config: WebhookConfig):
        self.store = store
        self.config = config
        self._wake_event = asyncio.Event()
        self._busy: dict[str, int] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    def wake(self) -> None:
        self._wake_event.set()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            resolver = None if self.config.allow_private else ssrf.PublicOnlyResolver()
            connector = aiohttp.TCPConnector(limit=200, resolver=resolver)
            self._http = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._http

    async def stop(self) -> None:
        await super().stop()
        if self._sending:  # a send cut short is sent again once its lease is over
            _, pending = await asyncio.wait(set(self._sending), timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        while True:
            self._wake_event.clear()
            try:
                await self.send_due()
            except Exception as exc:  # the database away: next pass
                log.warning("webhook_pass_failed", error=describe(exc))
            try:
                async with asyncio.timeout(self.config.poll_s):
                    await self._wake_event.wait()
            except TimeoutError:
                pass

    async def send_due(self) -> int:
        """Claim what is due and start sending it; returns how many were claimed."""
        lease_s = self.config.timeout_s + LEASE_MARGIN_S
        claimed = 0
        for endpoint_id in await self.store.due_endpoints():
            free = self.config.endpoint_concurrency - self._busy.get(endpoint_id, 0)
            if free <= 0:
                continue
            for delivery in await self.store.claim(endpoint_id, free, lease_s):
                claimed += 1
                self._busy[endpoint_id] = self._busy.get(endpoint_id, 0) + 1
                task = asyncio.create_task(self._deliver(delivery), name="webhook-send")
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        return claimed

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            await self.deliver(delivery)
        except Exception as exc:  # not recorded: sent again once its lease is over
            log.warning("webhook_record_failed", delivery_id=delivery.id, error=describe(exc))
        finally:
            self._busy[delivery.endpoint_id] -= 1
            if not self._busy[delivery.endpoint_id]:
                del self._busy[delivery.endpoint_id]
            self.wake()  # the endpoint may have more waiting

    async def deliver(self, delivery: Delivery) -> Settle:
        """One attempt, logged, and its consequence."""
        answer = await self.attempt(delivery)
        settle, retry_in, reason = self.settle(delivery, answer)
        await self.store.record(
            delivery,
            status=answer.status,
            latency_ms=answer.latency_ms,
            excerpt=answer.excerpt,
            error=answer.error,
            settle=settle,
            retry_in_s=retry_in,
            reason=reason,
        )
        outcome = (
            "succeeded"
            if settle == "succeeded"
            else "refused"
            if answer.refused
            else "error"
            if answer.status is None
            else "failed_status"
        )
        metrics.WEBHOOK_ATTEMPTS.labels(outcome).inc()
        metrics.WEBHOOK_SECONDS.observe(answer.latency_ms / 1000)
        log.info(
            "webhook_attempt",
            delivery_id=delivery.id,
            event_id=delivery.event_id,
            endpoint_id=delivery.endpoint_id,
            status=answer.status,
            error=answer.error,
            settle=settle,
            retry_in_s=round(retry_in, 1),
        )
        if settle == "disable":
            kind = "gone" if answer.status == 410 else "failing"
            metrics.WEBHOOK_ENDPOINTS_DISABLED.labels(kind).inc()
            log.error("webhook_endpoint_disabled", endpoint_id=delivery.endpoint_id, reason=reason)
        return settle

    def settle(self, delivery: Delivery, answer: Answer) -> tuple[Settle, float, str | None]:
        """What an answer means: succeeded, a retry in how long, failed, or the endpoint
        disabled (and why)."""
        if answer.status is not None and 200 <= answer.status < 300:
            return "succeeded", 0.0, None
        if answer.status == 410:
            return "disable", 0.0, "410 Gone"
        if delivery.failing_since is not None:
            failing_for = datetime.now(UTC).replace(tzinfo=None) - delivery.failing_since
            if failing_for.total_seconds() >= self.config.disable_after_s:
                return "disable", 0.0, f"failing since {delivery.failing_since:%Y-%m-%dT%H:%M:%SZ}"
        if delivery.step >= len(self.config.schedule_s):  # the first try, then each step
            return "failed", 0.0, "retry schedule exhausted"
        if answer.retry_after_s is not None:
            return "retry", answer.retry_after_s, None
        return "retry", self.config.step_s(delivery.step), None

    async def attempt(self, delivery: Delivery) -> Answer:
        """POST the envelope, signed; never raises for what the endpoint or the network
        does."""
        secrets_ = (delivery.secret,) if delivery.secret else self.config.secrets
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signing.signature_header(
                secrets_, delivery.event_id, timestamp, delivery.payload
            ),
        }
        started = time.perf_counter()

        def elapsed_ms() -> int:
            return round((time.perf_counter() - started) * 1000)

        refusal = ssrf.refusal_at_send(delivery.url, allow_private=self.config.allow_private)
        if refusal is not None:
            return Answer(None, None, f"refused: {refusal}", None, 0, refused=True)
        try:
            async with asyncio.timeout(self.config.timeout_s):
                async with self._session().post(
                    delivery.url, data=delivery.payload, headers=headers, allow_redirects=False
                ) as response:
                    body = await response.content.read(EXCERPT_CHARS * 4)
                    return Answer(
                        response.status,
                        body.decode("utf-8", "replace")[:EXCERPT_CHARS] or None,
                        None,
                        retry_after_s(response.headers.get("Retry-After")),
                        elapsed_ms(),
                    )
        except TimeoutError:
            error = f"no answer within {self.config.timeout_s:g} s"
            return Answer(None, None, error, None, elapsed_ms())
        except (aiohttp.ClientError, OSError, ssrf.TargetRefused) as exc:
            refused = ssrf.describe_refusal(exc)
            if refused is not None:
                return Answer(None, None, f"refused: {refused}", None, elapsed_ms(), True)
            return Answer(None, None, describe(exc), None, elapsed_ms())
