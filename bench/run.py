"""``make bench``: paylane under load on one machine, against the inline baseline.

Prints a markdown table, writes ``bench-results/results.json`` and ``latency.png``.
``--quick`` runs every phase briefly (a smoke run, not numbers to quote); ``--only``
runs some phases (``--only burst`` is the issue's side-by-side run and the CPU per payment
at saturation).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from paylane_common.storage import db
from tests.support.faultproxy import FaultProxy
from tests.support.polling import eventually
from tests.support.seeding import add_users
from tests.support.stack import Service, Stack, free_port, wait_ready

from . import brokerfloor, loglines, report, setup, wakeups
from .cpu import CpuMeter, idle_share, machine_ticks, server_pids
from .loadgen import Result, closed_loop, open_loop
from .presign import presign, transaction

OUT = Path("bench-results")
BASELINE = [sys.executable, "-m", "bench.baseline"]
PHASES = ("wakeups", "loglines", "ingress", "floor", "e2e", "baseline", "burst", "rounds")
#: What ``make bench`` runs without ``--only``: the rounds take 20 minutes and more.
DEFAULT_PHASES = PHASES[:-1]
CONSUMERS = ("order", "entitlement", "notifier")
#: A payment is done when both its pushes have arrived (one entitlement.granted event
#: carries both to the notifier).
PUSHES = ("order.paid", "entitlement.granted")


class PushWatcher:
    """One WebSocket per user; records when each order's pushes arrive. A socket the
    notifier closes is reopened, as an app would (``drops`` counts them: pushes sent
    meanwhile are lost, and the wait for them times out)."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[str, str], float] = {}
        self.drops = 0
        #: Sockets open and subscribed (their snapshot arrived).
        self.open = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._wanted: set[tuple[str, str]] = set()
        self._all_in = asyncio.Event()

    async def connect(self, http: aiohttp.ClientSession, url: str, users: list[str]) -> None:
        ready = []
        for user in users:
            first = asyncio.get_running_loop().create_future()
            self._tasks.append(asyncio.create_task(self._follow(http, url, user, first)))
            ready.append(first)
        await asyncio.gather(*ready)  # the snapshot arrived: subscribed

    async def _follow(
        self, http: aiohttp.ClientSession, url: str, user: str, first: asyncio.Future[None]
    ) -> None:
        while True:
            # A stream ticket (good for a minute) for each (re)connect, as a client asks for.
            ticket = setup.TOKENS.stream_ticket(user, session_expires_at=int(time.time()) + 86400)
            try:
                ws = await http.ws_connect(f"{url}/ws?ticket={ticket}", heartbeat=30)
            except aiohttp.ClientError:
                await asyncio.sleep(1)
                continue
            await self._read(ws, first)
            self.drops += 1
            self.open -= 1

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, first: asyncio.Future[None]) -> None:
        subscribed = False
        async for message in ws:
            if not subscribed:
                subscribed = True
                self.open += 1
            if not first.done():
                first.set_result(None)
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            push = json.loads(message.data)
            if push.get("out_trade_no"):
                key = (push["out_trade_no"], push["type"])
                self.arrived.setdefault(key, time.perf_counter())
                self._wanted.discard(key)
                if not self._wanted:
                    self._all_in.set()

    async def all_open(self, count: int, timeout: float = 60.0) -> None:
        """Until ``count`` sockets are open again (after the notifier restarted)."""

        async def reopened() -> bool:
            return self.open >= count

        await eventually(reopened, timeout, what="WebSockets reopened", interval=0.2)

    async def wait_for(self, keys: list[tuple[str, str]], timeout: float) -> None:
        """Until every key has arrived, or ``timeout`` (missing ones are reported)."""
        self._wanted = set(keys) - self.arrived.keys()
        self._all_in.clear()
        if self._wanted:
            try:
                await asyncio.wait_for(self._all_in.wait(), timeout)
            except TimeoutError:
                pass

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()


def _meter(stack: Stack) -> CpuMeter:
    """CPU of every running service, the broker, the database and the bench itself."""
    pids: dict[str, int] = {}
    for name, service in stack.services.items():
        # The co-hosted consumers are one process known by three names: counted once.
        shared = [other for other, pid in pids.items() if pid == service.process.pid]
        for other in shared:
            del pids[other]
        pids["consumers" if shared else name] = service.process.pid
    return CpuMeter({**pids, **server_pids(), "bench": os.getpid()})


async def _sample_rss(stack: Stack, after_s: float, into: dict[str, float]) -> None:
    """Resident memory of every service, mid-run (steady load)."""
    await asyncio.sleep(after_s)
    for name, service in stack.services.items():
        into[name] = round(setup.rss_mib(service.process.pid), 1)


async def _quiesce(env: setup.BenchEnv, timeout_s: float = 180.0) -> None:
    """Until the consumer queues are empty (bounded): the next phase starts from quiet."""

    async def quiet() -> bool:
        depths = await asyncio.to_thread(setup.queue_depths, env)
        return not depths.get("order.payments") and not depths.get("entitlement.orders")

    with contextlib.suppress(TimeoutError):  # the next phase starts regardless
        await eventually(quiet, timeout_s, what="empty consumer queues", interval=1)


async def _settled(timeout_s: float = 30.0, idle: float = 0.8) -> float:
    """Until the machine is mostly idle for a second (bounded); the seconds it took. What
    a phase leaves behind (MariaDB flushing the orders just inserted, RabbitMQ collecting
    a drained queue's garbage) must not fall on the next one's first burst."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        before = machine_ticks()
        await asyncio.sleep(1.0)
        if idle_share(before, machine_ticks()) >= idle:
            break
    return round(time.perf_counter() - started, 1)


async def _purged(env: setup.BenchEnv, queue: str, timeout_s: float = 60.0) -> None:
    """Purge ``queue`` until it stays empty (bounded)."""

    async def purged() -> bool:
        await asyncio.to_thread(setup.purge, env, queue)
        return not (await asyncio.to_thread(setup.queue_depths, env)).get(queue)

    try:
        await eventually(purged, timeout_s, what=f"{queue} empty", interval=1)
    except TimeoutError:
        raise RuntimeError(f"{queue} would not stay empty") from None


async def ingress_alone(stack: Stack, env: setup.BenchEnv, quick: bool) -> dict[str, Any]:
    """One ingress, then two replicas (as two pods behind a Service: requests spread
    round-robin), each at saturation and at fixed rates."""
    w = env.wechat
    pool_size = 500 if quick else 2000
    resources = [transaction(w.appid, w.mchid, f"BA{i:010d}", 2990) for i in range(pool_size)]
    signed = presign(w.platform_private_key_pem, w.apiv3_key, w.public_key_id, resources)
    seconds = 3 if quick else 10

    def cycle(n: int) -> list[Any]:
        return [signed[i % len(signed)] for i in range(n)]

    out: dict[str, Any] = {}
    replicas = [stack.services["ingress"]]
    for count, prefix in ((1, ""), (2, "x2_")):
        if count == 2:
            replicas.append(await stack.start("ingress", alias="ingress-2"))
        urls = [f"{r.url}/notify/wechatpay" for r in replicas]
        meter = _meter(stack).start()
        saturation = await closed_loop(urls, cycle(200_000), concurrency=64, seconds=seconds)
        out[f"{prefix}saturation"] = saturation.summary()
        out[f"{prefix}saturation_cpu"] = meter.stop().summary(saturation.ok)
        setup.purge(env, "order.payments")
        for rate in (200, 500, 1000, 2000):
            result = await open_loop(urls, cycle(int(rate * seconds)), rate)
            out[f"{prefix}rate_{rate}"] = result.summary()
            setup.purge(env, "order.payments")
    await stack.stop("ingress-2")
    return out


async def end_to_end(stack: Stack, env: setup.BenchEnv, pool: Any, quick: bool) -> dict[str, Any]:
    users = await add_users(pool, 50 if quick else 100)
    # One pending order each, so the snapshot a client gets on connect proves it is subscribed.
    await setup.create_orders(pool, users, len(users), "WARMUP")
    seconds = 3 if quick else 10
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        watcher = PushWatcher()
        await watcher.connect(http, stack.services["notifier"].url, users)
        for rate in (100, 250, 500, 1000):
            out[f"rate_{rate}"] = await _payments_at(
                stack, env, pool, watcher, users, rate, seconds, f"E{rate}X", out
            )
        await watcher.close()

        # Overloaded, with the CPU given to ingress first (as CPU requests or shares would
        # on a shared host): consumers at nice 10. The queues absorb what they cannot take.
        await _quiesce(env)
        await _restart_consumers(stack, ["nice", "-n", "10"])
        watcher = PushWatcher()
        await watcher.connect(http, stack.services["notifier"].url, users)
        out["prioritized_rate_1000"] = await _payments_at(
            stack, env, pool, watcher, users, 1000, seconds, "E1000P", None, drain_s=120
        )
        await watcher.close()
    await _restart_consumers(stack, [])
    return out


def _notifications(env: setup.BenchEnv, orders: list[tuple[str, str]]) -> list[Any]:
    """A signed payment notification for each order, at its amount (2990: premium)."""
    w = env.wechat
    return presign(
        w.platform_private_key_pem,
        w.apiv3_key,
        w.public_key_id,
        [transaction(w.appid, w.mchid, no, 2990) for no, _ in orders],
    )


async def _restart_consumers(stack: Stack, prefix: list[str]) -> None:
    for name in CONSUMERS:
        await stack.stop(name)
        await stack.start(name, argv=[*prefix, sys.executable, "-m", "paylane.cli", "serve", name])


async def _payments_at(
    stack: Stack,
    env: setup.BenchEnv,
    pool: Any,
    watcher: PushWatcher,
    users: list[str],
    rate: int,
    seconds: float,
    tag: str,
    out: dict[str, Any] | None,
    drain_s: float = 30,
) -> dict[str, Any]:
    """Fresh orders paid by notifications at ``rate``/s: acks, pushes, backlog, RSS (and,
    at 500/s with ``out``, the same notifications again as WeChat's duplicates)."""
    url = f"{stack.services['ingress'].url}/notify/wechatpay"
    count = int(rate * seconds)
    orders = await setup.create_orders(pool, users, count, tag)
    signed = _notifications(env, orders)
    depth_before = setup.queue_depths(env)
    sent_at: dict[str, float] = {}
    start = time.perf_counter()
    for i, (no, _) in enumerate(orders):
        sent_at[no] = start + i / rate
    rss: dict[str, float] = {}
    sampler = asyncio.create_task(_sample_rss(stack, seconds / 2, rss))
    meter = _meter(stack).start()
    acks = await open_loop(url, signed, rate)
    await sampler
    depth_after = setup.queue_depths(env)
    await watcher.wait_for([(no, "entitlement.granted") for no, _ in orders], drain_s)
    meter.stop()  # from the first send until every grant was pushed (or drain_s)
    tail_s = max(
        (watcher.arrived.get((no, "entitlement.granted"), float("inf")) for no, _ in orders)
    ) - (start + (count - 1) / rate)
    paid = Result(
        latencies_s=[
            watcher.arrived[(no, "order.paid")] - sent_at[no]
            for no, _ in orders
            if (no, "order.paid") in watcher.arrived
        ]
    )
    granted = [
        watcher.arrived[(no, "entitlement.granted")] - sent_at[no]
        for no, _ in orders
        if (no, "entitlement.granted") in watcher.arrived
    ]
    if rate == 500 and out is not None:
        # WeChat's duplicates: the same notifications again, all already applied.
        dup = await open_loop(url, signed[: int(500 * seconds)], 500)
        out["duplicates_500"] = dup.summary()
    return {
        "acks": acks.summary(),
        "pushed_order_paid": len(paid.latencies_s),
        "pushed_granted": len(granted),
        "orders": count,
        "notify_to_push_p50_ms": round(paid.percentile(50) * 1000, 1),
        "notify_to_push_p95_ms": round(paid.percentile(95) * 1000, 1),
        "notify_to_push_p99_ms": round(paid.percentile(99) * 1000, 1),
        "granted_p99_ms": round(Result(latencies_s=granted).percentile(99) * 1000, 1),
        "drain_after_last_send_s": round(tail_s, 2),
        "backlog_growth": {
            q: depth_after.get(q, 0) - depth_before.get(q, 0)
            for q in ("order.payments", "entitlement.orders")
        },
        "rss_mib": rss,
        "cpu": meter.summary(count),
    }


async def baseline_vs_paylane(
    stack: Stack, env: setup.BenchEnv, pool: Any, quick: bool
) -> dict[str, Any]:
    seconds = 3 if quick else 10
    users = await add_users(pool, 100)
    out: dict[str, Any] = {}

    async def run_against(url: str, rate: int, tag: str) -> Result:
        orders = await setup.create_orders(pool, users, int(rate * seconds), tag)
        return await open_loop(url, _notifications(env, orders), rate)

    # Start from quiet: the end-to-end phase may leave a backlog that paylane's own
    # consumers would still be draining (competing with ingress for the same cores).
    await _quiesce(env)
    baseline = await stack.start("baseline", env.service_env(), argv=BASELINE)
    paylane_url = f"{stack.services['ingress'].url}/notify/wechatpay"
    for rate in (200, 500):
        out[f"paylane_{rate}"] = (await run_against(paylane_url, rate, f"P{rate}Y")).summary()
        out[f"baseline_{rate}"] = (
            await run_against(f"{baseline.url}/notify/wechatpay", rate, f"B{rate}Y")
        ).summary()
    await stack.stop("baseline")

    # paylane as it would be deployed on a shared host: ingress first (CPU requests or
    # shares), the consumers at a lower priority catching up behind the queues.
    await _quiesce(env)
    await _restart_consumers(stack, ["nice", "-n", "10"])
    for rate in (200, 500):
        out[f"paylane_nice_consumers_{rate}"] = (
            await run_against(paylane_url, rate, f"N{rate}Y")
        ).summary()
    await _quiesce(env)
    await _restart_consumers(stack, [])

    # MySQL slowed by 500 ms per query, for everyone: paylane's consumers and the baseline.
    # Each query is held on its way to MySQL; queries in flight are not queued behind
    # each other's delay, so the proxy adds latency without capping throughput.
    async with FaultProxy("127.0.0.1", 3306, name="slow-mysql", latency_up=0.5) as proxy:
        slow_url = env.mysql_url.replace("127.0.0.1:3306", f"127.0.0.1:{proxy.port}")
        for name in ("order", "entitlement"):
            await stack.stop(name)
            await stack.start(name, env.service_env(slow_url))
        slow_baseline = await stack.start(
            "baseline", env.service_env(slow_url), alias="baseline-slow", argv=BASELINE
        )
        rate = 100
        await _quiesce(env)
        out["paylane_slow_db_100"] = (await run_against(paylane_url, rate, "PSZ")).summary()
        out["baseline_slow_db_100"] = (
            await run_against(f"{slow_baseline.url}/notify/wechatpay", rate, "BSZ")
        ).summary()
        await stack.stop("baseline-slow")
        for name in ("order", "entitlement"):  # their connections go through the proxy
            await stack.stop(name)
    return out


#: How the consumers run: three processes, or one (``paylane serve consumers``).
MODES = ("separate", "cohosted")
#: Each consumer's (HTTP, admin) ports, kept across restarts in either mode: the
#: watcher's WebSockets reconnect to the same notifier URL.
_PORTS: dict[str, tuple[int, int]] = {}


def procfile_mode() -> str:
    """How ``make run`` starts the consumers: co-hosted when the Procfile has a
    ``consumers`` line."""
    try:
        setup.procfile_argv("consumers")
    except KeyError:
        return "separate"
    return "cohosted"


def _argv(name: str) -> list[str]:
    """The Procfile's line for ``name`` where it has one, else ``nice -n 10 paylane serve
    name`` (the consumers' priority there)."""
    try:
        return setup.procfile_argv(name)
    except KeyError:
        return ["nice", "-n", "10", sys.executable, "-m", "paylane.cli", "serve", name]


async def _default_consumers(
    stack: Stack, extra_env: dict[str, str], mode: str | None = None
) -> None:
    """The consumers (re)started as ``make run`` starts them (the Procfile), or in
    ``mode``, with ``extra_env`` (a candidate setting under test, e.g.
    ``CONSUMER_PREFETCH``)."""
    mode = mode or procfile_mode()
    for name in (*CONSUMERS, "consumers"):
        if name in stack.services:
            await stack.stop(name)
    for name in CONSUMERS:
        _PORTS.setdefault(name, (free_port(), free_port()))
    if mode == "separate":
        for name in CONSUMERS:
            http, admin = _PORTS[name]
            env = {**extra_env, "ADMIN_PORT": str(admin)}
            await stack.start(name, env, argv=_argv(name), port=http)
        return
    env = {f"ORDER__{k}": v for k, v in stack.service_env["order"].items()}
    for name, (http, admin) in _PORTS.items():
        prefix = f"{name.upper()}__"
        env |= {f"{prefix}HTTP_PORT": str(http), f"{prefix}ADMIN_PORT": str(admin)}
    started = await stack.start(
        "consumers", {**extra_env, **env}, argv=_argv("consumers"), ready=False
    )
    del stack.services["consumers"]  # known by the three names below
    for name, (http, admin) in _PORTS.items():
        stack.services[name] = Service(name, http, started.process, started.log_path, admin)
        await wait_ready(stack.services[name])


async def bursts(
    stack: Stack, env: setup.BenchEnv, pool: Any, quick: bool, consumer_env: dict[str, str]
) -> dict[str, Any]:
    """The issue's side-by-side run: a burst of fresh orders' notifications at 1,000/s and
    at 1,500/s (open loop), paylane at its default start, then the inline baseline at the
    same rate; for paylane, the drain: until every payment is granted and both its pushes
    have arrived. CPU by process from the first send until the last push (paylane) or the
    last answer (baseline): the burst is beyond what the machine sustains end to end, so
    this is the cost per payment at saturation."""
    seconds = 5 if quick else 30
    users = await add_users(pool, 100)
    await setup.create_orders(pool, users, len(users), "BWARM")  # the snapshot on connect
    await _default_consumers(stack, consumer_env)
    baseline = await stack.start("baseline", env.service_env(), argv=BASELINE)
    out: dict[str, Any] = {"seconds": seconds, "consumer_env": consumer_env}
    async with aiohttp.ClientSession() as http:
        watcher = PushWatcher()
        await watcher.connect(http, stack.services["notifier"].url, users)
        for rate in (1000, 1500):
            count = rate * seconds
            mine = await setup.create_orders(pool, users, count, f"BP{rate}")
            theirs = await setup.create_orders(pool, users, count, f"BB{rate}")
            # Signed in worker processes, off the loop: the watcher answers its pings meanwhile.
            signed = await asyncio.to_thread(_notifications, env, mine)
            signed_b = await asyncio.to_thread(_notifications, env, theirs)
            await _quiesce(env)
            settled = await _settled()
            out[f"paylane_{rate}"] = await _burst_paylane(stack, env, watcher, mine, signed, rate)
            out[f"paylane_{rate}"]["settled_s"] = settled
            await _quiesce(env)
            settled = await _settled()
            out[f"baseline_{rate}"] = await _burst_baseline(stack, baseline.url, signed_b, rate)
            out[f"baseline_{rate}"]["settled_s"] = settled
        await watcher.close()
    await stack.stop("baseline")
    return out


async def rounds(
    stack: Stack,
    env: setup.BenchEnv,
    pool: Any,
    quick: bool,
    consumer_env: dict[str, str],
    modes: list[str],
    count: int,
    rate: int = 1000,
) -> dict[str, Any]:
    """Issue 31's measure: ``count`` rounds of a burst at ``rate``/s (30 s; open loop),
    each to paylane in every consumers' mode of ``modes`` and to the inline baseline, the
    contenders in turn (each round starts with the one the last round ended with, so
    that none always follows an idle machine), each once the machine is idle. Per burst
    the ack percentiles and the CPU per payment by process (paylane: until both pushes of
    every payment arrived)."""
    seconds = 5 if quick else 30
    users = await add_users(pool, 100)
    await setup.create_orders(pool, users, len(users), "RWARM")
    baseline = await stack.start("baseline", env.service_env(), argv=BASELINE)
    current = modes[0]
    await _default_consumers(stack, consumer_env, current)
    out: dict[str, Any] = {"seconds": seconds, "rate": rate, "modes": modes, "rounds": []}
    contenders = [*modes, "baseline"]
    async with aiohttp.ClientSession() as http:
        watcher = PushWatcher()
        await watcher.connect(http, stack.services["notifier"].url, users)
        for n in range(count):
            turn = contenders[n % len(contenders) :] + contenders[: n % len(contenders)]
            results: dict[str, Any] = {}
            for who in turn:
                orders = await setup.create_orders(pool, users, rate * seconds, f"R{n}{who[:2]}")
                signed = await asyncio.to_thread(_notifications, env, orders)
                if who != "baseline" and who != current:
                    await _default_consumers(stack, consumer_env, who)
                    current = who
                    await watcher.all_open(len(users))
                await _quiesce(env)
                settled = await _settled()
                if who == "baseline":
                    results[who] = await _burst_baseline(stack, baseline.url, signed, rate)
                else:
                    results[who] = await _burst_paylane(stack, env, watcher, orders, signed, rate)
                results[who]["settled_s"] = settled
            out["rounds"].append(results)
            print(report.round_line(n, results), flush=True)
        await watcher.close()
    await stack.stop("baseline")
    return out


async def _burst_paylane(
    stack: Stack,
    env: setup.BenchEnv,
    watcher: PushWatcher,
    orders: list[tuple[str, str]],
    signed: list[Any],
    rate: int,
) -> dict[str, Any]:
    url = f"{stack.services['ingress'].url}/notify/wechatpay"
    load_before, start = setup.load(), time.perf_counter()
    meter = _meter(stack).start()
    acks = await open_loop(url, signed, rate)
    backlog = setup.queue_depths(env)
    wanted = [(no, push) for no, _ in orders for push in PUSHES]
    drops = watcher.drops
    await watcher.wait_for(wanted, timeout=300)
    meter.stop()
    arrived = [watcher.arrived[key] for key in wanted if key in watcher.arrived]
    last_send = start + (len(orders) - 1) / rate
    return {
        "acks": acks.summary(),
        "orders": len(orders),
        "pushed": len(arrived),
        "pushes_wanted": len(wanted),
        "websocket_drops": watcher.drops - drops,
        "backlog_after_burst": {
            q: backlog.get(q, 0) for q in ("order.payments", "entitlement.orders")
        },
        "drain_after_last_send_s": round(max(arrived, default=last_send) - last_send, 2),
        "cpu": meter.summary(len(orders)),
        "load": [load_before, setup.load()],
    }


async def _burst_baseline(stack: Stack, url: str, signed: list[Any], rate: int) -> dict[str, Any]:
    """The baseline answers once its transaction committed: an ack is a payment done."""
    load_before = setup.load()
    meter = _meter(stack).start()
    acks = await open_loop(f"{url}/notify/wechatpay", signed, rate)
    meter.stop()
    return {
        "acks": acks.summary(),
        "cpu": meter.summary(len(signed)),
        "load": [load_before, setup.load()],
    }


async def main(
    quick: bool,
    only: set[str],
    consumer_env: dict[str, str],
    modes: list[str] | None = None,
    round_count: int = 10,
) -> int:
    modes = modes or [procfile_mode()]
    await asyncio.to_thread(OUT.mkdir, exist_ok=True)
    env = setup.create()
    results: dict[str, Any] = {"machine": setup.machine(), "quick": quick, "phases": sorted(only)}
    results["load"] = {"start": setup.load()}
    if "wakeups" in only:
        results["machine"]["loopback_round_trip_cpu_us"] = await wakeups.measure(1 if quick else 3)
    if "loglines" in only:
        results["log_lines"] = await loglines.measure(2_000 if quick else 20_000)
    stack = Stack(env.service_env(), OUT)
    stack.service_env["order"] = setup.ORDER_ENV
    try:
        await stack.start("ingress")
        if "ingress" in only:
            results["ingress_alone"] = await ingress_alone(stack, env, quick)
        if "floor" in only:
            results["broker_floor"] = await brokerfloor.measure(
                env.amqp_url, env.wechat.appid, env.wechat.mchid, 2 if quick else 5
            )
        # What ingress alone published names no order: the consumers must not start on it.
        await _purged(env, "order.payments")
        async with db.create_pool(env.mysql_url, maxsize=4) as pool:
            if only & {"e2e", "baseline"}:
                for name in CONSUMERS:  # at equal priority: these phases set it themselves
                    await stack.start(name)
            if "e2e" in only:
                results["end_to_end"] = await end_to_end(stack, env, pool, quick)
            if "baseline" in only:
                results["baseline"] = await baseline_vs_paylane(stack, env, pool, quick)
            if "burst" in only:
                results["burst"] = await bursts(stack, env, pool, quick, consumer_env)
            if "rounds" in only:
                results["rounds"] = await rounds(
                    stack, env, pool, quick, consumer_env, modes, round_count
                )
    finally:
        await stack.stop_all()
        await asyncio.to_thread(setup.destroy, env)
    results["load"]["end"] = setup.load()
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(report.markdown(results))
    report.plot(results, OUT / "latency.png")
    print(f"\nwrote {OUT / 'results.json'} and {OUT / 'latency.png'}")
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_PHASES),
        help=f"comma-separated phases to run, of {','.join(PHASES)} (default: all but rounds)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="rounds of the rounds phase: 1,000/s bursts to paylane and the baseline in turn",
    )
    parser.add_argument(
        "--consumers",
        choices=("procfile", *MODES, "both"),
        default="procfile",
        help="how the consumers run in the rounds phase: as the Procfile says (default), in"
        " three processes, in one (paylane serve consumers), or both in turn",
    )
    parser.add_argument(
        "--consumer-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the consumers in the burst phase (a candidate to measure)",
    )
    args = parser.parse_args()
    only = {phase.strip() for phase in args.only.split(",") if phase.strip()}
    if unknown := only - set(PHASES):
        parser.error(f"unknown phases {sorted(unknown)}; known: {', '.join(PHASES)}")
    consumer_env = dict(item.split("=", 1) for item in args.consumer_env)
    os.environ.setdefault("LOG_FORMAT", "json")
    modes = {"procfile": [procfile_mode()], "both": list(MODES)}.get(
        args.consumers, [args.consumers]
    )
    sys.exit(uvloop.run(main(args.quick, only, consumer_env, modes, args.rounds)))


if __name__ == "__main__":
    cli()
