"""The compose stack's memory on one small server: every container's memory at idle and
right after a burst of payments (docs/performance.md, "The containers").

    make up                                  # the stack, with the sandbox
    uv run python -m bench.stack_memory [--payments 300] [--concurrency 30]

Reads each running container of the project (COMPOSE_PROJECT_NAME, default "paylane")
with ``<engine> stats --no-stream``: the memory its cgroup charges (resident pages plus
the page cache the kernel can reclaim), the figure a memory limit is checked against.
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


def memory(project: str) -> dict[str, float]:
    """Service -> MiB charged to its container now."""
    names = subprocess.run(
        [engine(), "ps", "--filter", f"label=com.docker.compose.project={project}",
         "--format", '{{.ID}}\t{{.Label "com.docker.compose.service"}}'],
        capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    # By id: docker's CLI on podman's API cuts the first letter off the names.
    service_of = dict(line.split("\t") for line in names if "\t" in line)
    out = subprocess.run(
        [engine(), "stats", "--no-stream", "--format", "{{.ID}}\t{{.MemUsage}}",
         *service_of],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    usage: dict[str, float] = {}
    for line in out.splitlines():
        ident, _, mem = line.partition("\t")
        service = next((s for i, s in service_of.items() if i[:12] == ident[:12]), None)
        if service:
            usage[service] = _bytes(mem.split("/")[0]) / 1024**2
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
    print("| container | idle (MiB) | after the burst (MiB) |")
    print("|---|---:|---:|")
    for service in sorted(idle):
        print(f"| {service} | {idle[service]:.0f} | {after.get(service, 0):.0f} |")
    print(f"| **all** | {sum(idle.values()):.0f} | {sum(after.values()):.0f} |")


if __name__ == "__main__":
    main()
