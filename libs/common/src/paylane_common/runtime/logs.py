"""structlog configured once per process: JSON off a TTY, contextvars first, redaction last."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
import structlog

#: The service a line is from, where services share a process (``paylane serve
#: consumers``): set in each one's tasks, which every task they start inherits. A
#: variable of its own, so that clearing structlog's context per message or request
#: keeps it.
SERVICE: ContextVar[str | None] = ContextVar("paylane_service", default=None)


def add_service(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ``service`` on every line of a co-hosted service."""
    service = SERVICE.get()
    if service is not None:
        event_dict.setdefault("service", service)
    return event_dict


#: Keys whose values never reach a log line (secrets and decrypted payer data).
REDACTED_KEYS = frozenset(
    {
        "apiv3_key",
        "private_key",
        "merchant_private_key",
        "secret",
        "internal_api_secret",
        "client_token_secret",
        "client_token_private_key",
        "backend_api_secret",
        "wechat_app_secret",
        "session_key",
        "js_code",
        "token",
        "client_token",
        "ticket",
        "stream_ticket",
        "authorization",
        "signature",
        "paysign",
        "openid",
        "payer",
        "bank_account",
        "real_name",
        "ciphertext",
        "plaintext",
        "resource",
        "password",
        "x-internal-secret",
        "wechatpay-signature",
    }
)
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----.*?-----END [A-Z ]+-----", re.S)
REDACTED = "[redacted]"


#: Values that hold nothing to hide, answered without a look inside: most of a line's.
_PLAIN = frozenset({int, float, bool, type(None)})


def _scrub(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return _PEM.sub(REDACTED, value) if "-----BEGIN" in value else value
    if kind in _PLAIN:  # the exact types: a subclass (an enum, say) takes the long way
        return value
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if str(k).lower() in REDACTED_KEYS else _scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and "-----BEGIN" in value:
        return _PEM.sub(REDACTED, value)
    return value


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: hide secret keys at any depth and PEM blocks in strings.

    On every line a service writes, so the common values (strings without a PEM block,
    numbers) are passed over first: the ``Mapping`` check, an ABC's, cost more than the
    rest of the line's processing together."""
    for key, value in event_dict.items():
        if key.lower() in REDACTED_KEYS:
            event_dict[key] = REDACTED
        elif type(value) in _PLAIN or (type(value) is str and "-----BEGIN" not in value):
            continue  # _scrub's first answers, without the call
        else:
            event_dict[key] = _scrub(value)
    return event_dict


def _dumps(value: Any, **kw: Any) -> str:
    """orjson for the JSON lines (UTF-8, non-ASCII kept): a log line per message is on
    every service's hot path."""
    return orjson.dumps(value, default=kw.get("default")).decode()


#: Exceptions as data (``exception``: a list of dicts) in the JSON lines, without the
#: frames' local variables: those may hold keys, tokens and decrypted payer data.
_dict_tracebacks = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def _console_renderer() -> structlog.dev.ConsoleRenderer:
    """Aligned, coloured lines and rich tracebacks, without the frames' local variables."""
    return structlog.dev.ConsoleRenderer(
        exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
    )


def configure_logging(
    fmt: str | None = None,
    level: int = logging.INFO,
    stream: TextIO | None = None,
    *,
    cache_loggers: bool = True,
) -> None:
    """Configure structlog (and route stdlib logging through it) for this process,
    writing to ``stream`` (default: stderr).

    On a terminal the console renderer alone renders exceptions (pretty, with rich);
    otherwise each line is JSON and an exception is data, which redaction then scrubs
    like any other value.
    """
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_service,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    output: list[Any] = (
        [redact, _console_renderer()]
        if fmt == "console"
        else [_dict_tracebacks, redact, structlog.processors.JSONRenderer(serializer=_dumps)]
    )
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *output],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=cache_loggers,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *output],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
