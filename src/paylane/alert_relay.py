"""``paylane serve alert-relay``: Alertmanager's alerts to a WeCom (企业微信) group robot.

Alertmanager posts its own JSON to a webhook and cannot reshape it; a WeCom group robot
takes only ``{"msgtype": "markdown", "markdown": {"content": ...}}`` at its webhook URL
(``https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...``). This relay sits between
them (deploy/alertmanager/alertmanager.yml, receiver ``wecom``): each notification
Alertmanager sends to ``POST /alerts/wecom`` becomes one robot message naming every
alert's severity, summary, the queue or order it is about and its runbook section
(docs/operations.md, "Alerting"). It keeps nothing: a message the robot refuses is a 502,
and Alertmanager sends the notification again.
"""

from __future__ import annotations

from typing import ClassVar, Literal
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import orjson
import structlog
from aiohttp import web
from prometheus_client import Counter
from pydantic import BaseModel, Field, SecretStr, ValidationError

from paylane_common.runtime.service import base_app, serve
from paylane_common.runtime.settings import FILE_VARIABLES, BaseServiceSettings

log = structlog.get_logger(__name__)

#: WeCom's limit on a markdown message's content, in bytes of UTF-8.
WECOM_MAX_BYTES = 4096
#: The labels that say what an alert is about, shown in this order when an alert has them.
SUBJECT_LABELS = ("queue", "out_trade_no", "out_refund_no", "kind", "source", "reason", "job")

FORWARDED = Counter(
    "paylane_alert_relay_messages_total",
    "Alertmanager notifications the alert relay handled, by outcome",
    ["outcome"],
)
for _outcome in ("sent", "refused", "failed", "bad_request"):
    FORWARDED.labels(_outcome)


class AlertRelaySettings(BaseServiceSettings):
    file_variables: ClassVar[tuple[str, ...]] = (*FILE_VARIABLES, "WECOM_ROBOT_URL")
    http_port: int = Field(9094, ge=1, le=65535)
    admin_port: int = Field(9095, ge=1, le=65535)
    #: The alert relay: the WeCom group robot's webhook URL, key included (a secret:
    #: ``WECOM_ROBOT_URL_FILE``). ``http://`` only for a local test receiver.
    wecom_robot_url: SecretStr
    #: The alert relay: how long to wait for the robot's answer before telling
    #: Alertmanager the notification failed (it retries).
    wecom_timeout_s: float = Field(10.0, gt=0, le=60)


class Alert(BaseModel):
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class Notification(BaseModel):
    """What Alertmanager's webhook receiver posts (version 4); the fields used here."""

    status: Literal["firing", "resolved"]
    alerts: list[Alert] = Field(min_length=1)


def render(notification: Notification) -> str:
    """The robot's markdown for one notification: a line per alert, then what it is about
    and its runbook; cut to WeCom's 4096 bytes."""
    lines: list[str] = []
    for alert in notification.alerts:
        name = alert.labels.get("alertname", "alert")
        severity = alert.labels.get("severity", "")
        colour = "warning" if alert.status == "firing" else "info"
        state = "FIRING" if alert.status == "firing" else "RESOLVED"
        lines.append(
            f'<font color="{colour}">[{state}]</font> **{name}**'
            + (f" ({severity})" if severity else "")
        )
        summary = alert.annotations.get("summary")
        if summary:
            lines.append(f"> {summary}")
        for label in SUBJECT_LABELS:
            if label in alert.labels:
                lines.append(f"> {label}: `{alert.labels[label]}`")
        runbook = alert.annotations.get("runbook_url")
        if runbook:
            lines.append(f"> runbook: {runbook}")
    content = "\n".join(lines)
    encoded = content.encode()
    if len(encoded) > WECOM_MAX_BYTES:
        cut = encoded[: WECOM_MAX_BYTES - len(" …".encode())].decode(errors="ignore")
        content = cut + " …"
    return content


class Relay:
    def __init__(self, settings: AlertRelaySettings) -> None:
        self._url = settings.wecom_robot_url.get_secret_value()
        self._timeout = aiohttp.ClientTimeout(total=settings.wecom_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _without_key(self, text: str) -> str:
        """``text`` with the webhook's ``key`` (a secret) as ``****``."""
        for key in parse_qs(urlsplit(self._url).query).get("key", []):
            if key:
                text = text.replace(key, "****").replace(quote(key, safe=""), "****")
        return text

    async def open(self, _app: web.Application) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, content: str) -> str | None:
        """Post ``content`` to the robot: None when it took it, else why not."""
        assert self._session is not None
        body = {"msgtype": "markdown", "markdown": {"content": content}}
        try:
            async with self._session.post(self._url, json=body) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # aiohttp names the URL in some errors (an invalid URL, too many redirects):
            # never the robot's key, which is logged and answered to Alertmanager.
            return self._without_key(f"{type(exc).__name__}: {exc}")
        if response.status != 200 or not isinstance(answer, dict):
            return f"HTTP {response.status}"
        if answer.get("errcode") != 0:
            return f"errcode {answer.get('errcode')}: {answer.get('errmsg')}"
        return None


RELAY = web.AppKey("alert_relay", Relay)


async def wecom(request: web.Request) -> web.Response:
    try:
        notification = Notification.model_validate_json(await request.read())
    except ValidationError as exc:
        FORWARDED.labels("bad_request").inc()
        return web.json_response(
            {"error": "invalid_notification", "detail": exc.errors(include_url=False)[:5]},
            status=400,
            dumps=_dumps,
        )
    problem = await request.app[RELAY].send(render(notification))
    if problem is not None:
        outcome = "refused" if problem.startswith("errcode") else "failed"
        FORWARDED.labels(outcome).inc()
        log.error("wecom_robot_refused", alert_count=len(notification.alerts), why=problem)
        return web.json_response({"error": "robot_refused", "detail": problem}, status=502)
    FORWARDED.labels("sent").inc()
    log.info("wecom_robot_sent", alert_count=len(notification.alerts))
    return web.json_response({"sent": len(notification.alerts)})


def _dumps(value: object) -> str:
    return orjson.dumps(value, default=str).decode()


def build_app(settings: AlertRelaySettings) -> web.Application:
    app = base_app("alert-relay", admin_port=settings.admin_port)
    relay = Relay(settings)
    app[RELAY] = relay
    app.on_startup.append(relay.open)
    app.on_cleanup.append(relay.close)
    app.router.add_post("/alerts/wecom", wecom)
    return app


def main() -> None:
    serve(AlertRelaySettings, build_app)
