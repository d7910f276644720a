"""The credentials a request carries: the shared secret of ``X-Internal-Secret`` and the
token of ``Authorization: Bearer``. These only read them; each service decides what a
missing or wrong credential answers.

``headers.get(name)`` on a multi-mapping silently picks the first of several values, and
a proxy in front of us may pick the last: a secret header given twice is refused instead.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from aiohttp import web

from paylane_common.runtime.exceptions import PaylaneError

INTERNAL_SECRET_HEADER = "X-Internal-Secret"


class DuplicateHeader(PaylaneError):
    """A header that must appear at most once appeared more often."""

    def __init__(self, name: str) -> None:
        super().__init__(f"header {name} given more than once")
        self.name = name


def bearer_token(request: web.Request) -> str:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive); "" when
    there is none."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def internal_secret_ok(request: web.Request, secret: str) -> bool:
    """``X-Internal-Secret`` equals ``secret`` (constant time); an unset secret matches
    nothing.

    Raises :class:`DuplicateHeader` when the header is given more than once: that is no
    credential, and the caller says whether it answers it as a wrong secret or as a
    malformed request.
    """
    given = _sole_header(request.headers, INTERNAL_SECRET_HEADER)
    if not secret or given is None:
        return False
    return hmac.compare_digest(secret.encode(), given.encode())


def _sole_header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of ``name`` (case-insensitive), None when absent; raise
    :class:`DuplicateHeader` when it is given more than once."""
    wanted = name.lower()
    values = [value for key, value in headers.items() if key.lower() == wanted]
    if len(values) > 1:
        raise DuplicateHeader(name)
    return values[0] if values else None
