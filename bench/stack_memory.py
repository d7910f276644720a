"""The compose stack's memory on one small server: every container's memory at idle and
right after a burst of payments (docs/performance.md, "The containers").

    make up                                  # the stack, with the sandbox
    uv run python -m bench.stack_memory [--payments 300] [--concurrency 30]

Reads each running container of the project (COMPOSE_PROJECT_NAME, default "paylane"):
the RSS of its processes (from /proc, so on Linux, as root) and the memory its cgroup is
charged (``<engine> stats``: RSS plus reclaimable page cache, what a limit is checked
against).
The burst: orders placed by the app backend (``X-Internal-Secret``) for new users, each
paid in the sandbox, until every order is paid. Prints a markdown table and the image's
size.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ORDER = "http://127.0.0.1:8081"
SANDBOX = "http://127.0.0.1:8090"
UNITS = {"b": 1, "kb": 1e3, "kib": 1024, "mb": 1e6, "mib": 1024**2, "gb": 1e9, "gib": 1024**3}


def engine() -> str:
    return "docker" if shutil.which("docker") else "podman"


def _bytes(text: str) -> float:
    number = text.strip().rstrip("BbIi").strip()
    for unit in sorted(UNITS, key=len, reverse=True):
        if text.strip().lower().endswith(unit):
            number = text.strip()[: -len(unit)]
            return float(number) * UNITS[unit]
    return float(number)


def _rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants, in KiB (0 for one that has gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        return 0
    own = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
    )
    return own + sum(_rss_kib(child) for child in children)


def memory(project: str) -> dict[str, tuple[float, float]]:
    """Service -> (RSS, cgroup memory) of its container now, in MiB. RSS: resident pages
    of every process in it (its first process on the host and all descendants, from
    /proc: Linux, as root or the engine's user). Cgroup memory: what the engine's stats
    charge it (RSS plus reclaimable page cache), what a memory limit is checked against."""
    listing = subprocess.run(
        [engine(), "ps", "--filter", f"label=com.docker.compose.project={project}",
         "--format", '{{.ID}}\t{{.Label "com.docker.compose.service"}}'],
        capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    # By id: docker's CLI on podman's API cuts the first letter off the names.
    service_of = dict(line.split("\t") for line in listing if "\t" in line)
    stats = subprocess.run(
        [engine(), "stats", "--no-stream", "--format", "{{.ID}}\t{{.MemUsage}}", *service_of],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    charged: dict[str, float] = {}
    for line in stats.splitlines():
        ident, _, mem = line.partition("\t")
        for full, service in service_of.items():
            if full[:12] == ident[:12]:
                charged[service] = _bytes(mem.split("/")[0]) / 1024**2
    usage: dict[str, tuple[float, float]] = {}
    for ident, service in service_of.items():
        pid = subprocess.run(
            [engine(), "inspect", "--format", "{{.State.Pid}}", ident],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        usage[service] = (_rss_kib(int(pid)) / 1024, charged.get(service, 0.0))
    return usage


async def burst(payments: int, concurrency: int, secret: str) -> float:
    """``payments`` orders placed and paid; seconds until the last one is paid."""
    limit = asyncio.Semaphore(concurrency)
    started = time.perf_counter()
    headers = {"X-Internal-Secret": secret}

    async def one(http: aiohttp.ClientSession) -> None:
        async with limit:
            body = {
                "openid": f"o-bench-{uuid.uuid4().hex[:12]}",
                "package_type": "premium",
                "trade_type": "NATIVE",
            }
            async with http.post(f"{ORDER}/orders", json=body, headers=headers) as response:
                order: dict[str, Any] = await response.json()
                assert response.status == 201, order
            no = order["out_trade_no"]
            async with http.post(f"{SANDBOX}/sandbox/orders/{no}/pay", json={}) as response:
                assert response.status == 200, await response.text()
            while True:
                async with http.get(f"{ORDER}/orders/{no}", headers=headers) as response:
                    if (await response.json())["status"] == "paid":
                        return
                await asyncio.sleep(0.2)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        await asyncio.gather(*(one(http) for _ in range(payments)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument("--settle", type=float, default=20.0, help="idle seconds first")
    args = parser.parse_args()
    project = os.environ.get("COMPOSE_PROJECT_NAME", "paylane")
    secrets = Path(os.environ.get("PAYLANE_SECRETS_DIR", DEPLOY / "secrets"))
    secret = (secrets / "backend_api_secret").read_text().strip()
    image = os.environ.get("PAYLANE_IMAGE", "paylane:local")
    size = subprocess.run(
        [engine(), "image", "inspect", "--format", "{{.Size}}", image],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip

    time.sleep(args.settle)
    idle = memory(project)
    seconds = asyncio.run(burst(args.payments, args.concurrency, secret))
    after = memory(project)
    print(f"image {image}: {int(size) / 1e6:.0f} MB")
    print(f"burst: {args.payments} payments, {args.concurrency} at a time, {seconds:.1f} s\n")
    print("| container | RSS idle | RSS after the burst | cgroup memory after (MiB) |")
    print("|---|---:|---:|---:|")
    for service in sorted(idle):
        rss_after, charged_after = after.get(service, (0.0, 0.0))
        print(f"| {service} | {idle[service][0]:.0f} | {rss_after:.0f} | {charged_after:.0f} |")
    total_idle = sum(rss for rss, _ in idle.values())
    total_after = sum(rss for rss, _ in after.values())
    total_charged = sum(charged for _, charged in after.values())
    print(f"| **all** | {total_idle:.0f} | {total_after:.0f} | {total_charged:.0f} |")


if __name__ == "__main__":
    main()
