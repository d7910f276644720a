"""Times as WeChat Pay writes them: RFC 3339 in China time (``2024-05-01T12:00:00+08:00``)."""

from __future__ import annotations

from datetime import datetime

from paylane_common.contract.china_time import CHINA


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, CHINA).isoformat(timespec="seconds")


def rfc3339_ms(ts: float) -> str:
    """With milliseconds: for the record of notification attempts."""
    return datetime.fromtimestamp(ts, CHINA).isoformat(timespec="milliseconds")


def parse_rfc3339(value: str) -> float:
    """Seconds since the epoch; ValueError unless the string carries a timezone."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("has no timezone offset")
    return parsed.timestamp()
