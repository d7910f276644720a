"""A real Prometheus server (Debian's ``prometheus``) against the running stack, with the
committed configuration (deploy/prometheus/prometheus.yml, its jobs and rule file; the
compose host names replaced by the stack's ports): every target is up, every alerting
rule evaluates, and every metric a rule or a dashboard panel reads is there once one
order has been paid."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.clients import wait_for_types, ws_next
from tests.support.metrics import scrape
from tests.support.monitoring import PROMETHEUS_DIR, RULES, alerting_rules, tool, used_metric_names
from tests.support.polling import eventually
from tests.support.stack import Stack, free_port
from tests.support.stack_api import new_order
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.e2e

#: Series that only an event this test cannot cause produces; their family must still
#: be declared (``# TYPE``) on a service's /metrics.
NEEDS_AN_EVENT = {
    # Observed for batches of two or more: whether deliveries batch is up to timing.
    "paylane_consumer_batch_size_bucket": "a batch of two or more messages",
    "paylane_bill_differences_total": "the daily bill run (BILLS_RECONCILE_HOUR)",
    "paylane_bill_reconcile_runs_total": "the daily bill run (BILLS_RECONCILE_HOUR)",
    "paylane_notifier_refused_connections_total": "a notifier connection cap reached",
}


def prometheus_config(stack: Stack) -> dict[str, Any]:
    """The committed configuration, each job's target replaced by the stack's port
    (each service's admin listener), scraping every second."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    for job in config["scrape_configs"]:
        service = stack.services[job["job_name"]]
        address = service.admin_url.removeprefix("http://")
        job["static_configs"] = [{"targets": [address]}]
    return config


@contextlib.contextmanager
def prometheus_server(config: dict[str, Any], directory: Path) -> Iterator[str]:
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(RULES, directory / "rules.yml")
    port = free_port()
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture
async def prometheus(stack: Stack, tmp_path: Path) -> AsyncIterator[str]:
    with prometheus_server(prometheus_config(stack), tmp_path) as url:
        yield url


async def api(url: str, path: str, **params: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(f"{url}{path}", params=params) as r:
        body = await r.json()
        assert body["status"] == "success", body
        return body["data"]


async def pay_one_order(stack: Stack, wechat: FakeWechat) -> None:
    """A paid order with a WebSocket client watching it: consumer outcomes, outbox
    relays, pushes and notifier connections all get their series."""
    order = await new_order(stack, "premium")
    notifier = stack.services["notifier"].url
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{notifier}/ws?ticket={order.stream_ticket}")
        assert (await ws_next(ws))["type"] == "order.state"
        headers, body = wechat.notify(wechat.transaction(order.out_trade_no, order.amount_total))
        url = f"{stack.services['ingress'].url}/notify/wechatpay"
        async with http.post(url, data=body, headers=headers) as response:
            assert response.status == 204
        await wait_for_types(lambda: ws_next(ws), {"order.paid", "entitlement.granted"})
        await ws.close()


async def test_prometheus_scrapes_the_stack_and_finds_every_metric_used(
    stack: Stack, wechat: FakeWechat, prometheus: str
) -> None:
    await pay_one_order(stack, wechat)
    jobs = {job["job_name"] for job in prometheus_config(stack)["scrape_configs"]}

    async def every_target_up() -> bool:
        try:
            targets = (await api(prometheus, "/api/v1/targets"))["activeTargets"]
        except aiohttp.ClientError:  # still starting
            return False
        return {t["labels"]["job"] for t in targets if t["health"] == "up"} == jobs

    await eventually(every_target_up, 60, what="every target up")

    async def present() -> set[str]:
        return set(await api(prometheus, "/api/v1/label/__name__/values"))

    used = used_metric_names()
    # The queue gauges are refreshed every 15 s; everything else is there at once.
    await eventually(
        lambda: _covers(present(), used - set(NEEDS_AN_EVENT)), 60, what="every metric used"
    )
    missing = used - await present()
    assert missing <= set(NEEDS_AN_EVENT), missing
    declared = "".join([await scrape(s.admin_url) or "" for s in stack.services.values()])
    for name in missing:  # a counter's TYPE line names it with _total, a histogram without
        types = (f"# TYPE {name} ", f"# TYPE {name.removesuffix('_bucket')} ")
        assert any(t in declared for t in types), f"{name}: not declared by any service"

    async def rules_evaluated() -> bool:
        groups = (await api(prometheus, "/api/v1/rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return len(rules) == len(alerting_rules()) and all(
            r["health"] == "ok" and r.get("lastEvaluation", "").startswith("2") for r in rules
        )

    await eventually(rules_evaluated, 30, what="every rule evaluated without error")


async def _covers(names: Any, wanted: set[str]) -> bool:
    found: set[str] = await names
    return wanted <= found


def test_names_needing_an_event_are_used() -> None:
    """The exceptions above are only for metrics a rule or panel actually reads."""
    assert set(NEEDS_AN_EVENT) <= used_metric_names()
