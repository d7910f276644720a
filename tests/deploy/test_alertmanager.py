"""deploy/alertmanager with the real tools: Debian's ``prometheus-alertmanager`` runs the
shipped configuration (its timings shortened, its addresses the test's), the alert relay
runs as ``paylane serve alert-relay``, and a receiver shaped like a WeCom group robot and
a mail server (aiosmtpd) take what arrives. One alert fires from the shipped rules in a
real Prometheus; another, with a queue, is posted the way Prometheus posts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import SecretStr

from paylane.alert_relay import (
    WECOM_MAX_BYTES,
    Alert,
    AlertRelaySettings,
    Notification,
    Relay,
    render,
)
from tests.support.monitoring import ROOT, tool
from tests.support.polling import eventually
from tests.support.stack import free_port

ALERTMANAGER_DIR = ROOT / "deploy" / "alertmanager"
ROBOT_KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"


# --- a WeCom group robot and a mail server, as far as Alertmanager and the relay see ---


class Robot:
    """``POST /cgi-bin/webhook/send?key=KEY`` as WeCom answers it: the key must be the
    robot's, the body a markdown message of at most 4096 bytes (else errcode 40058)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.refuse = False

    async def send(self, request: web.Request) -> web.Response:
        if request.query.get("key") != ROBOT_KEY:
            return web.json_response({"errcode": 93000, "errmsg": "invalid webhook url"})
        body = await request.json()
        content = body.get("markdown", {}).get("content") if isinstance(body, dict) else None
        if body.get("msgtype") != "markdown" or not isinstance(content, str) or not content:
            return web.json_response({"errcode": 40008, "errmsg": "invalid message type"})
        if len(content.encode()) > WECOM_MAX_BYTES:
            return web.json_response({"errcode": 40058, "errmsg": "content exceed max length"})
        if self.refuse:
            return web.json_response({"errcode": 45009, "errmsg": "api freq out of limit"})
        self.messages.append(content)
        return web.json_response({"errcode": 0, "errmsg": "ok"})


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[Message] = []

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.mails.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
async def robot() -> AsyncIterator[tuple[Robot, str]]:
    robot = Robot()
    app = web.Application()
    app.router.add_post("/cgi-bin/webhook/send", robot.send)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield robot, f"http://127.0.0.1:{port}/cgi-bin/webhook/send?key={ROBOT_KEY}"
    finally:
        await runner.cleanup()


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@contextlib.contextmanager
def process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=30)


async def up(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


@pytest.fixture
async def relay(robot: tuple[Robot, str], tmp_path: Path) -> AsyncIterator[str]:
    """``paylane serve alert-relay``, the robot's URL in a secret file."""
    secret = tmp_path / "wecom_robot_url"
    secret.write_text(robot[1])
    port, admin = free_port(), free_port()
    env = {
        **os.environ,
        "WECOM_ROBOT_URL_FILE": str(secret),
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "ADMIN_PORT": str(admin),
        "LOG_FORMAT": "json",
    }
    args = [str(Path(sys.executable).parent / "paylane"), "serve", "alert-relay"]
    with process(args, tmp_path / "relay.log", env):
        await eventually(lambda: up(f"http://127.0.0.1:{admin}/readyz"), 30, "the relay ready")
        yield f"http://127.0.0.1:{port}"


def alertmanager_config(relay: str, smtp_port: int, directory: Path) -> Path:
    """The shipped configuration with the test's addresses and a second's timings."""
    config = yaml.safe_load((ALERTMANAGER_DIR / "alertmanager.yml").read_text())
    password = directory / "smtp_password"
    password.write_text("not-used-by-the-test-server\n")
    config["global"].update(
        smtp_smarthost=f"127.0.0.1:{smtp_port}", smtp_auth_password_file=str(password)
    )
    # aiosmtpd offers no AUTH without TLS: the login is the one thing not exercised.
    del config["global"]["smtp_auth_username"]
    shutil.copy(ALERTMANAGER_DIR / "paylane.tmpl", directory / "paylane.tmpl")
    config["templates"] = [str(directory / "paylane.tmpl")]
    config["route"].update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = webhook["url"].replace("http://alert-relay:9094", relay)
    path = directory / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def alertmanager(
    relay: str, mailbox: tuple[Mailbox, int], tmp_path: Path
) -> AsyncIterator[str]:
    config = alertmanager_config(relay, mailbox[1], tmp_path)
    port = free_port()
    args = [
        tool("prometheus-alertmanager", "prometheus-alertmanager"),
        f"--config.file={config}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with process(args, tmp_path / "alertmanager.log"):
        url = f"http://127.0.0.1:{port}"
        await eventually(lambda: up(f"{url}/-/ready"), 30, "Alertmanager ready")
        yield url


# --- the tests --------------------------------------------------------------------------


def test_amtool_checks_the_shipped_configuration(tmp_path: Path) -> None:
    config = yaml.safe_load((ALERTMANAGER_DIR / "alertmanager.yml").read_text())
    shutil.copy(ALERTMANAGER_DIR / "paylane.tmpl", tmp_path / "paylane.tmpl")
    config["templates"] = [str(tmp_path / "paylane.tmpl")]
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [tool("amtool", "prometheus-alertmanager"), "check-config", "alertmanager.yml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 receivers" in result.stdout and "1 templates" in result.stdout


@contextlib.contextmanager
def prometheus_with_rules(target: str, alertmanager: str, directory: Path) -> Iterator[str]:
    """A real Prometheus with the shipped rules, scraping ``target`` as the order service
    every second and sending to ``alertmanager``; its URL."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"] = [{"job_name": "order", "static_configs": [{"targets": [target]}]}]
    config["alerting"] = {
        "alertmanagers": [{"static_configs": [{"targets": [alertmanager.removeprefix("http://")]}]}]
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ROOT / "deploy" / "prometheus" / "rules.yml", directory / "rules.yml")
    port = free_port()
    args = [
        tool("prometheus"),
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with process(args, directory / "prometheus.log"):
        yield f"http://127.0.0.1:{port}"


async def _has_scraped(prometheus: str, query: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{prometheus}/api/v1/query", params={"query": query}) as response,
        ):
            return response.status == 200 and bool((await response.json())["data"]["result"])
    except aiohttp.ClientError:
        return False


async def test_a_rule_firing_reaches_the_wecom_robot_and_the_mailbox(
    alertmanager: str,
    robot: tuple[Robot, str],
    mailbox: tuple[Mailbox, int],
    tmp_path: Path,
) -> None:
    """An ABNORMAL refund counted by the order service: PaylaneRefundAbnormal (critical)
    fires in Prometheus and Alertmanager sends it to both receivers."""
    abnormal = {"n": 0}

    async def metrics(_request: web.Request) -> web.Response:
        text = (
            "# TYPE paylane_refunds_abnormal_total counter\n"
            f"paylane_refunds_abnormal_total {abnormal['n']}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with prometheus_with_rules(f"127.0.0.1:{port}", alertmanager, tmp_path) as prometheus:
            # Scraped at 0 first, so that the rule sees the increase.
            query = "paylane_refunds_abnormal_total == 0"
            await eventually(lambda: _has_scraped(prometheus, query), 60, "a scrape at 0")
            abnormal["n"] = 1
            await eventually(lambda: bool(robot[0].messages), 60, "the robot's message")
            await eventually(lambda: bool(mailbox[0].mails), 60, "the mail")
    finally:
        await runner.cleanup()

    message = robot[0].messages[0]
    assert "[FIRING]" in message and "**PaylaneRefundAbnormal** (critical)" in message
    assert "the payer has not got the money back" in message
    assert "runbook: docs/operations.md#paylanerefundabnormal" in message
    mail = mailbox[0].mails[0]
    assert mail["Subject"].startswith("[paylane FIRING:1] PaylaneRefundAbnormal")
    text = _text_part(mail)
    assert "runbook: docs/operations.md#paylanerefundabnormal" in text


async def test_an_alert_names_its_queue_in_both_messages(
    alertmanager: str, robot: tuple[Robot, str], mailbox: tuple[Mailbox, int]
) -> None:
    """PaylaneDeadLetters as Prometheus posts it: the queue is in the robot's message, the
    mail's subject and body, with the runbook section."""
    alert = {
        "labels": {
            "alertname": "PaylaneDeadLetters",
            "severity": "critical",
            "queue": "order.payments.dlq",
        },
        "annotations": {
            "summary": "order.payments.dlq holds 3 dead letters",
            "runbook_url": "docs/operations.md#paylanedeadletters",
        },
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{alertmanager}/api/v2/alerts", json=[alert]) as response:
            assert response.status == 200, await response.text()
    await eventually(lambda: bool(robot[0].messages and mailbox[0].mails), 60, "both messages")

    message = robot[0].messages[0]
    assert "**PaylaneDeadLetters** (critical)" in message
    assert "> queue: `order.payments.dlq`" in message
    assert "runbook: docs/operations.md#paylanedeadletters" in message
    mail = mailbox[0].mails[0]
    assert mail["Subject"] == "[paylane FIRING:1] PaylaneDeadLetters order.payments.dlq"
    text = _text_part(mail)
    assert "queue: order.payments.dlq" in text
    assert "runbook: docs/operations.md#paylanedeadletters" in text


async def test_a_robot_refusal_is_a_502_and_alertmanager_sends_again(
    alertmanager: str, robot: tuple[Robot, str], relay: str
) -> None:
    robot[0].refuse = True
    body = {"status": "firing", "alerts": [{"status": "firing", "labels": {"alertname": "X"}}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{relay}/alerts/wecom", json=body) as response:
            assert response.status == 502
            assert "45009" in (await response.json())["detail"]
        async with http.post(f"{relay}/alerts/wecom", data=b"{not json") as response:
            assert response.status == 400
            assert (await response.json())["error"] == "invalid_notification"
        alert = {"labels": {"alertname": "PaylaneSweepStalled", "severity": "warning"}}
        async with http.post(f"{alertmanager}/api/v2/alerts", json=[alert]) as response:
            assert response.status == 200
    robot[0].refuse = False  # Alertmanager retries the failed notification
    await eventually(lambda: bool(robot[0].messages), 60, "the retried message")
    assert "**PaylaneSweepStalled** (warning)" in robot[0].messages[0]


def test_a_long_notification_is_cut_to_wecoms_limit() -> None:
    alerts = [
        Alert(status="firing", labels={"alertname": f"A{i}"}, annotations={"summary": "字" * 300})
        for i in range(20)
    ]
    content = render(Notification(status="firing", alerts=alerts))
    assert len(content.encode()) <= WECOM_MAX_BYTES
    assert content.endswith(" …")


def _text_part(mail: Message) -> str:
    for part in mail.walk():
        if part.get_content_type() == "text/plain":
            payload: Any = part.get_payload(decode=True)
            return payload.decode()
    raise AssertionError("no text/plain part")


async def test_the_robots_key_is_never_in_a_failures_text() -> None:
    """The robot's URL holds its key (a secret): a failure to reach it is logged and
    answered to Alertmanager, never with the key (here a URL written without its scheme,
    which aiohttp refuses naming the whole URL)."""
    settings = AlertRelaySettings.model_construct(
        wecom_robot_url=SecretStr(f"qyapi.weixin.qq.com/cgi-bin/webhook/send?key={ROBOT_KEY}"),
        wecom_timeout_s=5.0,
    )
    relay = Relay(settings)
    await relay.open(web.Application())
    try:
        problem = await relay.send("x")
    finally:
        await relay.close(web.Application())
    assert problem is not None and "InvalidUrl" in problem
    assert ROBOT_KEY not in problem
    assert "key=****" in problem
