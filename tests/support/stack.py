"""Runs paylane services as real processes (``paylane serve …``) for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.support import hygiene
from tests.support.polling import eventually

#: Every port free_port() has handed out in this process.
_HANDED_OUT: set[int] = set()
#: Each pytest-xdist worker (``gw0``, ``gw1``…; a run without xdist is ``gw0``) hands out
#: ports from a block of its own, below the kernel's ephemeral range (32768 and up, where
#: ``bind(0)`` and outgoing connections take theirs) and clear of RabbitMQ's 25672: a
#: port one worker checked and released is never another worker's.
PORT_BLOCK = 1000
PORT_BASE = 20000
PORT_BLOCKS = 5


def _port_block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % PORT_BLOCKS if worker.isdigit() else 0
    start = PORT_BASE + index * PORT_BLOCK
    return range(start, start + PORT_BLOCK)


def free_port() -> int:
    """A port free on 127.0.0.1 now, from this worker's block, and never one this process
    was given before: a service given the same port for its two listeners refuses to
    start (CI saw ADMIN_PORT == HTTP_PORT)."""
    block = _port_block()
    offset = random.randrange(len(block))  # another session may be using the block too
    for i in range(len(block)):
        port = block[(offset + i) % len(block)]
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port left in {block}")


#: Services whose /readyz and /metrics are on a second listener (``ADMIN_PORT``) only:
#: every one but the sandbox.
ADMIN_PORT_SERVICES = frozenset({"ingress", "order", "entitlement", "notifier"})


@dataclass
class Service:
    name: str
    port: int
    process: asyncio.subprocess.Process
    log_path: Path
    admin_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """Where /readyz and /metrics are: the admin listener, else the service's port."""
        return f"http://127.0.0.1:{self.admin_port or self.port}"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class Stack:
    """Starts services with a shared base environment; stops them all at the end."""

    def __init__(self, base_env: dict[str, str], log_dir: Path):
        self.base_env = base_env
        #: What one service (by name) gets on every start on top of ``base_env``: a secret
        #: no other service may hold (the order service's token-signing key).
        self.service_env: dict[str, dict[str, str]] = {}
        self.log_dir = log_dir
        self.services: dict[str, Service] = {}

    async def start(
        self,
        name: str,
        extra_env: dict[str, str] | None = None,
        *,
        alias: str | None = None,
        argv: list[str] | None = None,
        ready: bool = True,
        port: int | None = None,
    ) -> Service:
        """Run ``paylane serve name`` (or ``argv``) on ``port`` (default: a free one); it is
        known as ``alias`` (default: its name) and must answer ``/readyz`` (unless ``ready``
        is false: then it is only started)."""
        port = port or free_port()
        given = {**self.base_env, **self.service_env.get(name, {}), **(extra_env or {})}
        env = {**os.environ, **given}
        for variable in given:
            # A setting given as a file wins over the same variable inherited from the
            # test run's environment (make exports AMQP_URL and MYSQL_URL).
            if variable.endswith("_FILE") and variable.removesuffix("_FILE") not in given:
                env.pop(variable.removesuffix("_FILE"), None)
        env.update({"HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(port), "LOG_FORMAT": "json"})
        admin_port = free_port() if name in ADMIN_PORT_SERVICES else None
        if admin_port is not None:
            env["ADMIN_PORT"] = str(admin_port)
        key = alias or name
        log_path = self.log_dir / f"{key}.log"
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *(argv or [sys.executable, "-m", "paylane.cli", "serve", name]),
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        hygiene.register_log(log_path)
        service = Service(key, port, process, log_path, admin_port)
        self.services[key] = service
        if ready:
            await wait_ready(service)
        return service

    async def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the service and wait for it; returns its exit code (-9 if it was killed)."""
        service = self.services.pop(name)
        if service.process.returncode is None:
            service.process.send_signal(sig)
        try:
            return await asyncio.wait_for(service.process.wait(), timeout)
        except TimeoutError:
            service.process.kill()
            await service.process.wait()
            return -9

    async def stop_all(self) -> None:
        """Every service signalled at once, each waited for within its own budget: one
        after the other, a stack's teardown took the sum of their shutdowns."""
        await asyncio.gather(*(self.stop(name) for name in list(self.services)))


async def wait_ready(service: Service, timeout: float = 30.0) -> None:
    """Until the service answers ``/readyz`` with 200; its log's tail if it exits or
    is not ready in time."""
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            if service.process.returncode is not None:
                raise RuntimeError(f"{service.name} exited:\n{service.log_tail()}")
            try:
                async with http.get(f"{service.admin_url}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        try:
            await eventually(ready, timeout, what=f"{service.name} ready", interval=0.1)
        except TimeoutError:
            raise TimeoutError(
                f"{service.name} not ready in {timeout}s:\n{service.log_tail()}"
            ) from None
