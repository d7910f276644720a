"""Chaos: rolling restarts. Every service restarted one replica at a time under a steady
stream of WeChat Pay notifications; and what a replica does with the connections it has
when SIGTERM lands.

Two replicas of ingress, order, entitlement and notifier (the sandbox stays one). WeChat
posts to one notify URL, the app's backend to one order URL and clients connect to one
notifier URL: a balancer each (``tests/support/balancer.py``), which sends a request that
failed before any response to the next replica, as nginx's ``proxy_next_upstream error``
does. Each service in turn, each of its replicas in turn: SIGTERM (while still in the
balancer's rotation), its exit awaited, a replacement started and ready, into the
rotation (the replica it replaces out).

Before each service's restart, users whose orders the stream pays next connect a client
(half SSE through the balancer, half WebSocket to a replica they pick) and keep it open
to the end, reconnecting with the id of the last message they saw whenever a replica
ends their stream. Afterwards:

- WeChat Pay was never answered 5xx (503 included) and never failed to connect;
- every acknowledged notification: one paid order, one grant, nothing twice, no DLQ;
- every client learned its order paid and granted (pushed live, or in the snapshot of
  a reconnect), and no reconnect was refused;
- the order API placed every order (201; 200 for one sent again), through its
  balancer meanwhile;
- every SIGTERMed replica exited 0 within 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import pytest

from tests.chaos.harness.driver import Notification, WechatDriver
from tests.chaos.harness.env import ChaosEnv, chaos_env, create_orders
from tests.chaos.harness.invariants import assert_clean
from tests.chaos.harness.rolling import SHUTDOWN_BUDGET_S, Fleet, OrderPlacer
from tests.chaos.harness.scenario import run_scenario
from tests.chaos.harness.state import in_clause, query
from tests.support.clients import FollowingClient
from tests.support.infra import Infra
from tests.support.polling import eventually
from tests.support.stack_api import Order
from tests.support.stack_config import minted_ticket

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

SERVICES = ("ingress", "order", "entitlement", "notifier")
#: What is reached over HTTP; entitlement only consumes.
BALANCED = ("ingress", "order", "notifier")
#: Notifications a second, and orders enough for the stream to outlast the eight
#: restarts by far (20 to 45 s here, with a busy machine): it ends ``AFTER_S`` after.
RATE = 12.0
ORDERS = 900
AFTER_S = 3.0
#: Users who keep a stream open, connected before each service's restart: one order in
#: ``CLIENT_SPACING`` of those the stream pays next (from ``CLIENT_LEAD`` on). They stay
#: connected until the end, through the notifier's restart.
CLIENTS_PER_RESTART, CLIENT_SPACING, CLIENT_LEAD = 8, 3, 6
#: Orders a second placed through the order API while it restarts.
ORDER_RATE = 2.0
#: Connections a balancer keeps alive to one ingress replica.
KEPT_ALIVE = 40


@pytest.fixture(scope="module")
async def env(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ChaosEnv]:
    async with chaos_env(infra, tmp_path_factory.mktemp("chaos-rolling-logs")) as env:
        yield env


async def test_after_sigterm_ingress_answers_on_its_open_connections_signalled_again_or_not(
    env: ChaosEnv,
) -> None:
    """A balancer keeps connections to ingress alive. The replica gets SIGTERM and, once
    it has stopped listening, another one (``make run``'s Ctrl-C reaches honcho and the
    services, and honcho signals them again). A notification the balancer sends on each
    connection the replica still has is answered 204 (the drain: a request already on
    its way when the signal lands is answered, not dropped); meanwhile ``/readyz``
    says it is shutting down; and the replica exits 0."""
    orders = await create_orders(env, 2 * KEPT_ALIVE)
    replica = await env.stack.start("ingress", alias="ingress-draining")
    notifications = WechatDriver(replica.url, env.wechat, orders).notifications
    connector = aiohttp.TCPConnector(limit=KEPT_ALIVE)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        # Connections opened and kept alive, one notification answered on each.
        opened = await asyncio.gather(
            *(_post(http, replica.url, n) for n in notifications[:KEPT_ALIVE])
        )
        assert set(opened) == {"204"}, opened
        replica.process.send_signal(signal.SIGTERM)
        await eventually(lambda: _refused(replica.port), 10, what="listener closed", interval=0)
        replica.process.send_signal(signal.SIGTERM)
        sent = asyncio.gather(*(_post(http, replica.url, n) for n in notifications[KEPT_ALIVE:]))
        readiness = await _readiness(replica.admin_url)  # meanwhile
        outcomes = Counter(await sent)
    exit_code = await env.stack.stop("ingress-draining", timeout=SHUTDOWN_BUDGET_S)
    assert outcomes == {"204": KEPT_ALIVE}, f"not answered: {dict(outcomes)}"
    assert readiness == (503, "down: shutting down")
    assert exit_code == 0


async def _post(http: aiohttp.ClientSession, url: str, notification: Notification) -> str:
    """The status of one delivery, "refused" if it could not connect, else the error."""
    try:
        async with http.post(
            f"{url}/notify/wechatpay", data=notification.body, headers=notification.headers
        ) as response:
            await response.read()
            return str(response.status)
    except aiohttp.ClientConnectorError:
        return "refused"
    except (aiohttp.ClientError, OSError) as exc:
        return type(exc).__name__


async def _readiness(admin_url: str) -> tuple[int, str | None]:
    """``/readyz``'s status and what its ``shutdown`` check says (None: no such check)."""
    async with aiohttp.ClientSession() as http, http.get(f"{admin_url}/readyz") as response:
        return response.status, (await response.json())["checks"].get("shutdown")


async def _refused(port: int) -> bool:
    """Whether a new connection to ``port`` is refused, or reset as the listener it
    was queued on closes: nothing listens any more."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    writer.close()
    return False


async def test_rolling_restart_of_every_service_under_a_steady_stream(env: ChaosEnv) -> None:
    fleet = await Fleet.scale_out(env, SERVICES, BALANCED)
    try:
        await _rolling_restart(env, fleet)
    finally:
        await fleet.stop()


@dataclass
class Follower:
    """A user whose order the stream pays, following it from a connected client."""

    order: Order
    client: FollowingClient
    #: The order's notification's place in the stream.
    position: int


async def _rolling_restart(env: ChaosEnv, fleet: Fleet) -> None:
    followers: list[Follower] = []
    placer = OrderPlacer(fleet.url("order"), ORDER_RATE)
    #: How many notifications had been sent when each service's restart was over.
    sent_after: dict[str, int] = {}
    # The clients' streams last the whole test: no overall deadline.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with contextlib.AsyncExitStack() as clients:
        http = await clients.enter_async_context(aiohttp.ClientSession(timeout=timeout))

        async def follow_next(driver: WechatDriver) -> None:
            """Clients for the orders the stream pays next, half of them over SSE."""
            wave = []
            for i in range(CLIENTS_PER_RESTART):
                position = driver.stats.sent + CLIENT_LEAD + i * CLIENT_SPACING
                order = driver.notifications[position].order
                client = _client(http, fleet, order, "sse" if i % 2 == 0 else "ws")
                wave.append(Follower(order, await clients.enter_async_context(client), position))
            for follower in wave:
                await follower.client.wait_connected()
            followers.extend(wave)

        async def inject(driver: WechatDriver) -> dict[str, Any]:
            placing = asyncio.create_task(placer.run())
            try:
                for service in SERVICES:
                    await follow_next(driver)
                    await fleet.restart(service)
                    sent_after[service] = driver.stats.sent
            finally:
                placing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await placing
            # The restarts happened under the stream, not after it; a little more of it
            # on the new replicas, then it ends.
            flowing = not driver.stats.finished
            more = driver.stats.sent + int(RATE * AFTER_S)
            await driver.wait_until("the stream after", lambda s: s.sent >= more or s.finished)
            driver.end()
            return {"sent_after": sent_after, "stream_outlasted_restarts": flowing}

        report = await run_scenario(
            env,
            "rolling restart, two replicas each",
            inject,
            orders=ORDERS,
            rate=RATE,
            ingress_url=fleet.url("ingress"),
        )
        learned = await _what_clients_learned(env, followers)
        _add_figures(report.notes, fleet, placer, followers, learned)
        assert_clean(report)
    _assert_rolled_cleanly(report.line(), report.driver, report.notes, fleet, placer)
    missed = [
        f.order.out_trade_no for f, how in zip(followers, learned, strict=True) if how is None
    ]
    assert not missed, f"clients that never learned their order paid and granted: {missed}"


def _client(
    http: aiohttp.ClientSession, fleet: Fleet, order: Order, transport: Literal["sse", "ws"]
) -> FollowingClient:
    """SSE through the balancer; WebSocket to a replica the client picks (the balancer
    does not proxy upgrades)."""
    notifier = fleet.replicas["notifier"].balancer
    assert notifier is not None

    def tickets() -> str:  # minted here: the order replicas are being restarted too
        return minted_ticket(order.user_id)

    if transport == "sse":
        return FollowingClient(http, lambda: notifier.url, tickets, "sse")
    return FollowingClient(http, notifier.pick, tickets, "ws")


async def _what_clients_learned(env: ChaosEnv, followers: list[Follower]) -> list[str | None]:
    """For each follower, the type of the first message that told its client the order is
    paid with the plan and regenerations the database holds (``entitlement.granted``
    pushed live, ``order.state`` in a snapshot), or None if none did."""
    users = [f.order.user_id for f in followers]
    rows = await query(
        env.pool,
        "SELECT id, payment_status, regenerate_count FROM users WHERE " + in_clause("id", users),
        *users,
    )
    final = {str(r["id"]): (r["payment_status"], r["regenerate_count"]) for r in rows}
    learned: list[str | None] = []
    for follower in followers:
        state = ("paid", *final[follower.order.user_id])
        no = follower.order.out_trade_no

        def told(message: dict[str, Any], no: str = no, state: tuple[Any, ...] = state) -> bool:
            fields = (message["status"], message["payment_status"], message["regenerate_count"])
            return message["out_trade_no"] == no and fields == state

        try:
            learned.append((await follower.client.wait_for(told, timeout=15))["type"])
        except TimeoutError:
            learned.append(None)
    return learned


def _add_figures(
    notes: dict[str, Any],
    fleet: Fleet,
    placer: OrderPlacer,
    followers: list[Follower],
    learned: list[str | None],
) -> None:
    longest = max(fleet.shutdowns, key=lambda s: s.seconds)
    notes["restarts"] = len(fleet.shutdowns)
    notes["shutdowns"] = {s.replica: f"{s.exit_code}/{s.seconds:.2f}s" for s in fleet.shutdowns}
    notes["longest_shutdown"] = f"{longest.replica} {longest.seconds:.2f}s"
    notes["balancers"] = {
        name: {
            "requests": group.balancer.stats.requests,
            "next_upstream": group.balancer.stats.next_upstream,
            "failures": dict(group.balancer.stats.failures),
            "502": group.balancer.stats.no_backend,
            "broken": group.balancer.stats.broken,
        }
        for name, group in fleet.replicas.items()
        if group.balancer is not None
    }
    notes["orders_api"] = {"statuses": dict(placer.statuses), "errors": placer.errors}
    sent_after = notes["sent_after"]
    notifier_restart = range(sent_after["entitlement"], sent_after["notifier"])
    notes["clients"] = {
        transport: _client_figures(
            [
                (f, how)
                for f, how in zip(followers, learned, strict=True)
                if f.client.transport == transport
            ],
            notifier_restart,
        )
        for transport in ("sse", "ws")
    }


def _client_figures(
    learned: list[tuple[Follower, str | None]], notifier_restart: range
) -> dict[str, Any]:
    clients = [f.client for f, _ in learned]
    hows = [str(how) for _, how in learned]
    return {
        "clients": len(clients),
        "paid_while_notifier_restarted": sum(f.position in notifier_restart for f, _ in learned),
        "connects": sum(c.connects for c in clients),
        "ended_by_server": sum(c.ended_by_server for c in clients),
        "refused": sum(sum(c.refusals.values()) for c in clients),
        "errors": sum(c.errors for c in clients),
        "learned_from": {how: hows.count(how) for how in sorted(set(hows))},
    }


def _assert_rolled_cleanly(
    line: str, driver: dict[str, int], notes: dict[str, Any], fleet: Fleet, placer: OrderPlacer
) -> None:
    assert notes["stream_outlasted_restarts"], (
        f"the stream ended before the last restart: more ORDERS needed; {line}"
    )
    assert driver["503"] == 0 and driver["errors"] == 0, f"WeChat Pay saw 5xx or errors: {line}"
    assert set(placer.statuses) <= {200, 201} and placer.errors == 0, (
        f"the order API failed orders: {notes['orders_api']}"
    )
    # A browser's EventSource gives up for good on any answer but 200.
    refused = {t: figures["refused"] for t, figures in notes["clients"].items()}
    assert not any(refused.values()), f"clients refused on reconnect: {refused}"
    assert len(fleet.shutdowns) == 2 * len(SERVICES)
    slow = [s for s in fleet.shutdowns if s.exit_code != 0 or s.seconds > SHUTDOWN_BUDGET_S]
    assert not slow, f"replicas that did not exit 0 within {SHUTDOWN_BUDGET_S:.0f}s: {slow}"
