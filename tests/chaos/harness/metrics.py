"""What the services say about themselves: counters of their ``/metrics`` and the
deadlocks their logs tell of."""

from __future__ import annotations

import aiohttp

from tests.chaos.harness.env import ChaosEnv


async def metric(url: str, name: str, **labels: str) -> float:
    """A counter of a service's /metrics (0 when absent or the service is unreachable)."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
            text = await response.text()
    except aiohttp.ClientError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def consumer_outcomes(env: ChaosEnv) -> dict[str, tuple[int, dict[str, int]]]:
    """``{queue: (pid, {outcome: n})}`` from the order and entitlement consumers' /metrics."""
    found: dict[str, tuple[int, dict[str, int]]] = {}
    for name in ("order", "entitlement"):
        service = env.stack.services.get(name)
        if service is None:
            continue
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{service.admin_url}/metrics") as response,
            ):
                text = await response.text()
        except aiohttp.ClientError:
            continue
        for line in text.splitlines():
            if not line.startswith("paylane_consumer_messages_total{"):
                continue
            labels = dict(
                part.split("=", 1)
                for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            queue, outcome = labels["queue"].strip('"'), labels["outcome"].strip('"')
            counts = found.setdefault(queue, (service.process.pid, {}))[1]
            counts[outcome] = int(float(line.rsplit(" ", 1)[1]))
    return found


DEADLOCK = "Deadlock found when trying to get lock"


def deadlocks_logged(env: ChaosEnv) -> int:
    """MySQL deadlocks (error 1213) the order and entitlement services ran into, as their
    log files tell (a killed and restarted service appends to the same file)."""
    total = 0
    for name in ("order", "entitlement"):
        path = env.stack.log_dir / f"{name}.log"
        if path.exists():
            total += path.read_text(errors="replace").count(DEADLOCK)
    return total
