"""China Standard Time (UTC+8, no daylight saving): WeChat Pay's clock. Its API writes
times in it (``2024-05-01T12:00:00+08:00``) and its bills' days are China days."""

from __future__ import annotations

from datetime import timedelta, timezone

CHINA = timezone(timedelta(hours=8))
