"""``POST/GET/DELETE /webhooks/endpoints`` (the backend only; the rows of
``paylane_order.api.ORDER_API``): the handlers, their body and their answers' models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from paylane_common.contract.events import validation_summary
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.web.openapi import body_model, validate_json

from ..bindings import BindingsUnavailable
from ..config import ORDER_CONFIG
from ..errors import BrokerUnavailable, Conflict, InvalidRequest, NotFound
from . import ssrf
from .store import Endpoint, WebhookStore
from .types import WEBHOOK_EVENTS, expand

WEBHOOK_STORE = web.AppKey("webhook_store", WebhookStore)


class CreateEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ``https://`` and a public host (``http://`` and private hosts only with
    #: ``WEBHOOK_ALLOW_PRIVATE=true``).
    url: str = Field(min_length=1, max_length=2048, examples=["https://backend.example.com/hooks"])
    #: Event types (or families, as ``order.*``); none given: every type.
    events: list[str] | None = Field(
        default=None, min_length=1, max_length=len(WEBHOOK_EVENTS) + 4, examples=[["order.paid"]]
    )
    description: str = Field(default="", max_length=255)

    @field_validator("events")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else list(expand(value))


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointView(_Reply):
    """An endpoint; its secret is never shown again after it was made."""

    id: str
    url: str
    source: Literal["config", "api"] = Field(
        description="`config`: one of `WEBHOOK_URLS`; `api`: made with this API"
    )
    events: list[str]
    description: str
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None
    created_at: datetime

    @classmethod
    def of(cls, endpoint: Endpoint) -> EndpointView:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            source=endpoint.source,
            events=list(endpoint.events),
            description=endpoint.description,
            status=endpoint.status,
            disabled_reason=endpoint.disabled_reason,
            created_at=endpoint.created_at.replace(tzinfo=UTC),
        )


class CreatedEndpoint(EndpointView):
    secret: str = Field(
        description="`whsec_…`: what the endpoint verifies the signatures with; shown only now"
    )


class EndpointList(_Reply):
    endpoints: list[EndpointView]


def _answer(answer: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(
        text=answer.model_dump_json(), status=status, content_type="application/json"
    )


async def create_endpoint(request: web.Request) -> web.Response:
    try:
        body = validate_json(body_model(request), await request.read() or b"{}")
    except ValidationError as exc:
        raise InvalidRequest(validation_summary(exc)) from None
    assert isinstance(body, CreateEndpoint)
    config = request.app[ORDER_CONFIG].webhooks
    try:
        ssrf.check_url(body.url, allow_private=config.allow_private)
        if not config.allow_private:
            await ssrf.check_resolves_public(body.url)
    except ssrf.TargetRefused as exc:
        raise InvalidRequest(f"url: {exc}", code="invalid_webhook_url") from None
    events = body.events if body.events is not None else list(WEBHOOK_EVENTS)
    try:
        endpoint, secret = await request.app[WEBHOOK_STORE].create(
            body.url, events, body.description
        )
    except (BindingsUnavailable, ConfigError) as exc:
        raise BrokerUnavailable(
            f"the endpoint could not be subscribed to its events now ({exc}): nothing was"
            " made, try again"
        ) from None
    view = EndpointView.of(endpoint)
    return _answer(CreatedEndpoint(**view.model_dump(), secret=secret), status=201)


async def list_endpoints(request: web.Request) -> web.Response:
    endpoints = await request.app[WEBHOOK_STORE].endpoints()
    return _answer(EndpointList(endpoints=[EndpointView.of(e) for e in endpoints]))


async def delete_endpoint(request: web.Request) -> web.Response:
    endpoint_id = request.match_info["endpoint_id"]
    source = await request.app[WEBHOOK_STORE].delete(endpoint_id)
    if source is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}", code="unknown_endpoint")
    if source == "config":
        raise Conflict(
            "this endpoint is one of WEBHOOK_URLS: remove it from the configuration",
            code="configured_endpoint",
        )
    return web.Response(status=204)
