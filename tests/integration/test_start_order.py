"""Start order does not matter (startup.py): a service started while its broker or its
database cannot be reached (a fault proxy refusing the real one) stays alive and not
ready, says what it waits for in one log line an attempt without credentials, and serves
once the dependency is there. SIGTERM while it waits ends it cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.faultproxy import FaultProxy, through
from tests.support.infra import Infra
from tests.support.polling import eventually
from tests.support.stack import Service, Stack, wait_ready

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = Stack({}, tmp_path)
    yield stack
    await stack.stop_all()


async def get(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.json()


async def waiting_answers(service: Service, dependency: str, where: str) -> None:
    """Alive, not ready, naming what it waits for; the log says it once an attempt."""

    async def logged_twice() -> bool:
        return service.log_path.read_text().count('"waiting_for_dependency"') >= 2

    await eventually(logged_twice, 20, what="two attempts logged")
    assert service.process.returncode is None
    assert (await get(f"{service.url}/healthz"))[0] == 200
    status, body = await get(f"{service.admin_url}/readyz")
    assert status == 503
    assert body["checks"][dependency].startswith(f"waiting: {where}")  # type: ignore[index]
    lines = [line for line in service.log_path.read_text().splitlines() if "waiting_for" in line]
    assert all(
        f'"at":"{where}"' in line and f'"dependency":"{dependency}"' in line for line in lines
    )


@pytest.mark.parametrize("dependency", ["rabbitmq", "mysql"])
async def test_a_service_started_before_its_dependency_waits_then_serves(
    stack: Stack, infra: Infra, amqp_url: str, mysql_url: str, dependency: str
) -> None:
    host, port = (
        (infra.amqp_host, infra.amqp_port)
        if dependency == "rabbitmq"
        else (infra.mysql_host, infra.mysql_port)
    )
    async with FaultProxy(host, port, name=dependency) as proxy:
        proxy.refuse()
        env = {
            "AMQP_URL": through(proxy)(amqp_url) if dependency == "rabbitmq" else amqp_url,
            "MYSQL_URL": through(proxy)(mysql_url) if dependency == "mysql" else mysql_url,
        }
        service = await stack.start("entitlement", env, ready=False)
        await waiting_answers(service, dependency, f"127.0.0.1:{proxy.port}")
        log = service.log_path.read_text()
        for url in env.values():
            credentials = url.split("//", 1)[1].rpartition("@")[0]
            assert credentials not in log

        proxy.heal()
        await wait_ready(service, timeout=30)  # the next attempt finds it
    # The dependency gone again (the proxy closed): SIGTERM still ends it in time.
    code = await stack.stop(service.name, signal.SIGTERM, timeout=12)
    assert code == 0, service.log_tail()


async def test_sigterm_while_waiting_ends_the_service_cleanly(
    stack: Stack, amqp_url: str, mysql_url: str
) -> None:
    async with FaultProxy("127.0.0.1", 9, name="nothing") as proxy:
        proxy.refuse()
        service = await stack.start(
            "entitlement",
            {"AMQP_URL": through(proxy)(amqp_url), "MYSQL_URL": mysql_url},
            ready=False,
        )
        await eventually(
            lambda: '"waiting_for_dependency"' in service.log_path.read_text(), 20, what="waiting"
        )
        assert await stack.stop(service.name, signal.SIGTERM, timeout=10) == 0
        assert "Traceback" not in service.log_path.read_text()


async def test_paylane_deps_says_which_is_missing_and_how_to_start_it(
    amqp_url: str, mysql_url: str
) -> None:
    async with FaultProxy("127.0.0.1", 9, name="nothing") as proxy:
        proxy.refuse()
        port = proxy.port
        missing = await _deps({"AMQP_URL": through(proxy)(amqp_url), "MYSQL_URL": mysql_url})
    assert missing.returncode == 1
    [line] = missing.stderr.splitlines()
    assert line.startswith(f"rabbitmq is not reachable at 127.0.0.1:{port} (")
    assert "rabbitmq-server -detached" in line and "guest" not in line
    assert (await _deps({"AMQP_URL": amqp_url, "MYSQL_URL": mysql_url})).returncode == 0


async def _deps(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "paylane.cli", "deps"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
