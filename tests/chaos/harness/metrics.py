"""What the consumers say about themselves: their messages by outcome (``/metrics``) and
the deadlocks their logs tell of."""

from __future__ import annotations

from tests.chaos.harness.env import ChaosEnv
from tests.support.metrics import samples, scrape


async def consumer_outcomes(env: ChaosEnv) -> dict[str, tuple[int, dict[str, int]]]:
    """``{queue: (pid, {outcome: n})}`` from the order and entitlement consumers' /metrics."""
    found: dict[str, tuple[int, dict[str, int]]] = {}
    for name in ("order", "entitlement"):
        service = env.stack.services.get(name)
        if service is None:
            continue
        text = await scrape(service.admin_url)
        if text is None:
            continue
        for labels, value in samples(text, "paylane_consumer_messages_total"):
            counts = found.setdefault(labels["queue"], (service.process.pid, {}))[1]
            counts[labels["outcome"]] = int(value)
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
