"""Redaction: secrets and payer data never reach a log line."""

from __future__ import annotations

import io
import json

import structlog

from paylane_common.logs import REDACTED, configure_logging, redact
from tests.support.hygiene import configure_session_logging

PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----"


def test_redacts_secret_keys_at_any_depth() -> None:
    event = redact(
        None,
        "info",
        {
            "event": "x",
            "openid": "o-secret",
            "nested": {"Authorization": "WECHATPAY2 ...", "ok": 1, "payer": {"openid": "o"}},
            "items": [{"token": "t"}],
            "text": f"key is {PEM} here",
        },
    )
    assert event["openid"] == REDACTED
    assert event["nested"] == {"Authorization": REDACTED, "ok": 1, "payer": REDACTED}
    assert event["items"] == [{"token": REDACTED}]
    assert "MIIE" not in event["text"]


def test_json_lines_carry_context_and_no_secrets() -> None:
    buffer = io.StringIO()
    try:
        configure_logging("json", stream=buffer, cache_loggers=False)
        structlog.contextvars.bind_contextvars(event_id="EV-1", out_trade_no="T1")
        structlog.get_logger("t").info("paid", apiv3_key="0123456789abcdef0123456789abcdef")
        structlog.contextvars.clear_contextvars()
    finally:
        configure_session_logging()
    line = json.loads(buffer.getvalue().strip().splitlines()[-1])
    assert line["event_id"] == "EV-1"
    assert line["out_trade_no"] == "T1"
    assert line["apiv3_key"] == REDACTED
