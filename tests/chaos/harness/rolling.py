"""Services run as two replicas each, behind balancers where clients reach them over HTTP,
and the rolling restart: one replica at a time SIGTERMed, replaced, the replacement ready
before the next one goes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from tests.chaos.harness.env import ChaosEnv
from tests.support import hygiene
from tests.support.balancer import Balancer
from tests.support.stack_config import BACKEND

#: The budget docs/commands.md gives a service from SIGTERM to its exit.
SHUTDOWN_BUDGET_S = 10.0


@dataclass
class Shutdown:
    replica: str
    exit_code: int
    seconds: float


@dataclass
class Replicas:
    """The live replicas of one service (aliases in the stack), and its balancer if
    something reaches it over HTTP."""

    service: str
    names: list[str]
    balancer: Balancer | None = None
    #: Replicas started so far: the next one is ``<service>-<started + 1>``.
    started: int = 1


@dataclass
class Fleet:
    """Services of a chaos stack with two replicas each (the first is the one
    ``chaos_env`` started, under the service's own name); what SIGTERM cost each."""

    env: ChaosEnv
    replicas: dict[str, Replicas] = field(default_factory=dict)
    shutdowns: list[Shutdown] = field(default_factory=list)

    @classmethod
    async def scale_out(
        cls, env: ChaosEnv, services: tuple[str, ...], balanced: tuple[str, ...]
    ) -> Fleet:
        """A second replica of each of ``services``; a balancer in front of each of
        ``balanced``."""
        fleet = cls(env)
        for service in services:
            group = Replicas(service, [service])
            if service in balanced:
                group.balancer = await Balancer(service).start()
                group.balancer.add(env.stack.services[service].url)
            fleet.replicas[service] = group
            await fleet._start_replica(group)
        return fleet

    def url(self, service: str) -> str:
        """The balancer's URL: where clients reach ``service``."""
        balancer = self.replicas[service].balancer
        assert balancer is not None, f"{service} has no balancer"
        return balancer.url

    async def stop(self) -> None:
        """The balancers (the replicas go with the stack)."""
        for group in self.replicas.values():
            if group.balancer is not None:
                await group.balancer.stop()

    async def restart(self, service: str) -> None:
        """Each replica in turn: SIGTERM, its exit awaited, a replacement started and
        ready. The balancer learns of it only then: the replica it replaces stays in
        the rotation throughout, as with a static upstream list or an endpoint removal
        that has not caught up, so requests keep reaching a replica that is shutting
        down or gone (its connections closed, then refused)."""
        group = self.replicas[service]
        for name in list(group.names):
            url = self.env.stack.services[name].url
            await self._stop_replica(group, name)
            await self._start_replica(group)
            if group.balancer is not None:
                group.balancer.remove(url)

    async def _stop_replica(self, group: Replicas, name: str) -> None:
        began = time.monotonic()
        code = await self.env.stack.stop(name, timeout=SHUTDOWN_BUDGET_S)
        self.shutdowns.append(Shutdown(name, code, time.monotonic() - began))
        group.names.remove(name)

    async def _start_replica(self, group: Replicas) -> None:
        group.started += 1
        alias = f"{group.service}-{group.started}"
        extra = self.env.extra_env.get(group.service)
        service = await self.env.stack.start(group.service, extra, alias=alias)
        group.names.append(alias)
        if group.balancer is not None:
            group.balancer.add(service.url)


class OrderPlacer:
    """The app's backend placing orders through the order API's balancer at ``rate`` a
    second while replicas come and go, each with an ``Idempotency-Key`` (so a request
    the balancer sent again after a reset cannot place a second order: it answers 200
    with the first). Statuses counted: 201 (or 200) expected, nothing else."""

    def __init__(self, url: str, rate: float) -> None:
        self._url = f"{url}/orders"
        self._rate = rate
        self.statuses: Counter[int] = Counter()
        self.errors = 0

    async def run(self) -> None:
        """Until cancelled."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                await asyncio.sleep(1 / self._rate)
                await self._place(http)

    async def _place(self, http: aiohttp.ClientSession) -> None:
        openid = f"o-{uuid.uuid4().hex[:16]}"
        hygiene.register(openid)  # payer data: must never be logged
        body = {"package_type": "basic", "trade_type": "JSAPI", "openid": openid}
        headers = {**BACKEND, "Idempotency-Key": uuid.uuid4().hex}
        try:
            async with http.post(self._url, json=body, headers=headers) as response:
                await response.read()
                self.statuses[response.status] += 1
        except (aiohttp.ClientError, TimeoutError, OSError):
            self.errors += 1
