"""Redaction: secrets and payer data never reach a log line."""

from __future__ import annotations

import io
import json
import logging

import structlog

from paylane_common.runtime.logs import REDACTED, configure_logging, redact
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
            "remedy": {"bank_account": "6222020202020202", "real_name": "张三"},
        },
    )
    assert event["openid"] == REDACTED
    assert event["nested"] == {"Authorization": REDACTED, "ok": 1, "payer": REDACTED}
    assert event["items"] == [{"token": REDACTED}]
    assert "MIIE" not in event["text"]
    assert event["remedy"] == {"bank_account": REDACTED, "real_name": REDACTED}


def test_the_fast_path_for_plain_values_misses_no_pem_block() -> None:
    """Plain values skip the deep look; a PEM block in a str subclass, a tuple or a
    number's neighbour is still found."""

    class Text(str):
        pass

    event = redact(
        None,
        "info",
        {"event": "x", "n": 3, "ok": True, "none": None, "sub": Text(PEM), "pair": ("a", PEM)},
    )
    assert (event["n"], event["ok"], event["none"]) == (3, True, None)
    assert event["sub"] == REDACTED
    assert event["pair"] == ["a", REDACTED]


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


#: Made at run time: the source lines a traceback quotes do not contain it.
KEY_IN_A_LOCAL = "k3y" * 11


def _fail(apiv3_key: str) -> None:
    raise ValueError("decryption failed")


def _log_a_failure(fmt: str) -> str:
    buffer = io.StringIO()
    try:
        configure_logging(fmt, stream=buffer, cache_loggers=False)
        try:
            _fail(KEY_IN_A_LOCAL)
        except ValueError:
            structlog.get_logger("t").exception("undecryptable")
            logging.getLogger("aiohttp.server").exception("Error handling request")
    finally:
        configure_session_logging()
    return buffer.getvalue()


def test_json_lines_carry_exceptions_as_data_without_locals() -> None:
    output = _log_a_failure("json")
    assert KEY_IN_A_LOCAL not in output  # a frame's local is never rendered
    for line in output.strip().splitlines():
        entry = json.loads(line)
        [error] = entry["exception"]
        assert (error["exc_type"], error["exc_value"]) == ("ValueError", "decryption failed")
        assert error["frames"][-1]["name"] == "_fail"
        assert "locals" not in error["frames"][-1]
        assert "exc_info" not in entry


def test_the_console_renders_exceptions_itself_without_locals() -> None:
    output = _log_a_failure("console")
    assert "ValueError" in output
    assert "decryption failed" in output
    assert KEY_IN_A_LOCAL not in output
