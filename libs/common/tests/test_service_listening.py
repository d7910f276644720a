"""A service's /readyz (on its admin port) stays 503 until its public listener is open:
the admin listener opens first, during start-up, and a balancer that trusted /readyz at
that moment sent traffic to a port that refused it (seen on CI as a refused connection
right after the service was ready)."""

from __future__ import annotations

import asyncio
import socket
import sys
import textwrap
import time
from pathlib import Path

import aiohttp


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SERVICE = textwrap.dedent(
    """
    import asyncio, sys
    from paylane_common.runtime.service import base_app, run
    from paylane_common.runtime.settings import BaseServiceSettings

    settings = BaseServiceSettings(http_host="127.0.0.1", http_port=int(sys.argv[1]),
                                   admin_port=int(sys.argv[2]))
    app = base_app("probe", admin_port=settings.admin_port)

    async def slow_last_step(_app):  # after the admin listener, before the public one
        await asyncio.sleep(2.0)

    app.on_startup.append(slow_last_step)
    run(app, settings)
    """
)


async def test_readyz_waits_for_the_public_listener(tmp_path: Path) -> None:
    public, admin = _port(), _port()
    while admin == public:
        admin = _port()
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(public), str(admin), stderr=asyncio.subprocess.PIPE
    )
    try:
        seen: list[tuple[int, dict[str, str]]] = []
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(f"http://127.0.0.1:{admin}/readyz") as response:
                        seen.append((response.status, (await response.json())["checks"]))
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            assert seen and seen[-1][0] == 200, seen
            # Ready means the public port takes connections now.
            async with http.get(f"http://127.0.0.1:{public}/healthz") as response:
                assert response.status == 200
        # While the slow step ran, the admin port answered: not ready, and why.
        waiting = [checks for status, checks in seen if status == 503]
        assert waiting, seen
        assert waiting[0] == {"listening": "down: the public listener is not open yet"}
    finally:
        process.terminate()
        await process.wait()
