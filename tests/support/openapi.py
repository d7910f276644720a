"""Real answers held to the OpenAPI documents (docs/openapi/, made from the services'
route tables): :func:`check_response` fails a test whose call got an answer its document
does not describe, by status, content type or body. ``stack_api.call`` checks every answer
of the order service and ingress with it."""

from __future__ import annotations

from functools import cache
from urllib.parse import parse_qsl, urlsplit

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from paylane.openapi import DOCUMENTS

#: Served by every service but not part of its API (health, metrics, the document).
OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


@cache
def spec(service: str) -> OpenAPI:
    return OpenAPI.from_dict(DOCUMENTS[service].document())


def documented(service: str) -> bool:
    return service in DOCUMENTS


def check_response(
    service: str,
    method: str,
    target: str,
    status: int,
    headers: dict[str, str],
    body: bytes,
) -> None:
    """AssertionError unless ``service``'s document describes this answer to ``method
    target`` (a path with its query); calls of :data:`OPERATIONAL_PATHS` pass."""
    url = urlsplit(target)
    if url.path in OPERATIONAL_PATHS:
        return
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    request = MockRequest(
        "http://127.0.0.1", method, url.path, args=dict(parse_qsl(url.query)), headers=headers
    )
    response = MockResponse(body, status, headers, content_type)
    try:
        spec(service).validate_response(request, response)
    except Exception as exc:
        raise AssertionError(
            f"{service}: {method} {target} answered {status} {body[:300]!r},"
            f" which docs/openapi/{service}.json does not describe: {exc}"
        ) from exc
