"""Skip locally, fail under CI: a test whose tool or engine is missing skips on a
developer's machine, but fails where ``CI`` is set, since .ci/run installs all of them."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    """True where the CI environment variable is set (.ci/run sets it)."""
    return bool(os.environ.get("CI"))


def skip_or_fail(why: str, ci_message: str | None = None) -> NoReturn:
    """Skip with ``why``; under CI, fail with ``ci_message`` (default: ``why``)."""
    if under_ci():
        pytest.fail(ci_message or why)
    pytest.skip(why)


def require_tool(path: str | None, why: str) -> str:
    """``path`` (what ``shutil.which`` found), or a skip / a CI failure saying ``why``."""
    if path is None:
        skip_or_fail(why, f"{why} (.ci/run installs it)")
    return path
