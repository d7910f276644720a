"""Reading a service's Prometheus ``/metrics`` (the text exposition format)."""

from __future__ import annotations

import re

import aiohttp

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


async def scrape(url: str) -> str | None:
    """The text of ``{url}/metrics``; None when the service cannot be reached."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
            return await response.text()
    except aiohttp.ClientError:
        return None


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of the labelled metric ``name``: (its labels, its value)."""
    found = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = dict(_LABEL.findall(line[len(name) + 1 : line.rindex("}")]))
            found.append((labels, float(line.rsplit(" ", 1)[1])))
    return found


async def metric(url: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples with these labels (0 when there is none or the
    service cannot be reached)."""
    text = await scrape(url)
    if text is None:
        return 0.0
    return sum(value for found, value in samples(text, name) if labels.items() <= found.items())
