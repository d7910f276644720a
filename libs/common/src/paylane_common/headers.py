"""Reading a security-relevant HTTP header exactly once, and comparing a shared secret.

``headers.get(name)`` on a multi-mapping silently picks the first of several values, and
a proxy in front of us may pick the last: a header given twice is refused instead.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from .exceptions import PaylaneError


class DuplicateHeader(PaylaneError):
    """A header that must appear at most once appeared more often."""

    def __init__(self, name: str) -> None:
        super().__init__(f"header {name} given more than once")
        self.name = name


def sole_header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of ``name`` (case-insensitive), None when absent; raise
    :class:`DuplicateHeader` when it is given more than once."""
    wanted = name.lower()
    values = [value for key, value in headers.items() if key.lower() == wanted]
    if len(values) > 1:
        raise DuplicateHeader(name)
    return values[0] if values else None


def secret_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison; an unset secret matches nothing."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
