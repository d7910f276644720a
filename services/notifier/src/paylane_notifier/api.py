"""The notifier's transports as one table (``paylane_common.web.openapi``), as far as OpenAPI
can say them: ``GET /events`` is a ``text/event-stream`` whose events' ``data`` are
:class:`PushedMessage` JSON; ``GET /ws`` is an upgrade (101) whose text frames are the
same JSON, named by the ``x-websocket`` extension. The models document
:meth:`messages.ClientMessage.as_dict` (a test holds them to it)."""

from __future__ import annotations

from datetime import datetime
from importlib import metadata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from paylane_common.contract.catalog import PaymentStatus
from paylane_common.web.openapi import Api, Operation, Param, Reply

from .sse import PING_S, sse_stream
from .websocket import (
    CLOSE_FULL,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_MANY_FOR_USER,
    HEARTBEAT_S,
    websocket_stream,
)

MessageType = Literal[
    "order.paid",
    "order.refunded",
    "order.failed",
    "entitlement.granted",
    "entitlement.revoked",
    "fulfilment.succeeded",
    "fulfilment.failed",
    "order.state",
]
_SCHEMAS = "#/components/schemas"


class PushedMessage(BaseModel):
    """One push: every key present, ``null`` where its source does not carry it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: MessageType
    out_trade_no: str | None
    status: Literal["pending", "paid", "failed", "refunded", "needs_review"] | None = Field(
        description="the order's status as the client should see it"
    )
    payment_status: PaymentStatus | None = Field(description="the user's plan")
    regenerate_count: int | None
    amount_refund: int | None = Field(description="fen, of a refund")
    generation_id: str | None = Field(description="the generation a paid order unlocks")
    reason: Literal["closed", "expired", "failed"] | None = Field(
        description="`order.failed`: why the order ended unpaid"
    )
    event_id: str | None
    occurred_at: datetime = Field(description="also the SSE `id`, in ms since the epoch")


class StreamClosed(BaseModel):
    """The last message of a stream whose session expired: sign in again, then reconnect
    with a fresh ticket."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["stream.closed"]
    reason: Literal["token_expired"]


class StreamError(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    error: str = Field(description="`unauthorized`, `too_many_connections`, `unavailable`")
    message: str


TICKET = "ticket"
TOKEN = "token"
BEARER = "bearer"
_LAST_EVENT_ID = Param(
    "last_event_id",
    "query",
    "the last message's id (ms since the epoch): the snapshot holds only what changed since",
    {"type": "string"},
)
_REFUSALS = {
    401: Reply(
        "a missing, forged or expired stream ticket, or another kind of token (a session)",
        StreamError,
    ),
    503: Reply("shutting down, or this replica is full: retry", StreamError),
}
_MESSAGES = {"oneOf": [{"$ref": f"{_SCHEMAS}/PushedMessage"}, {"$ref": f"{_SCHEMAS}/StreamClosed"}]}

NOTIFIER_API = Api(
    title="paylane notifier",
    version=metadata.version("paylane-notifier"),
    description=(
        "Pushes a user's payment results to their client: the current state on connect"
        " (`order.state` messages), then each change live. One JSON object a message."
    ),
    security_schemes={
        TICKET: {
            "type": "apiKey",
            "in": "query",
            "name": "ticket",
            "description": "a stream ticket: the order API's `POST /stream-tickets`, or the"
            " `stream_ticket` of `POST /orders`; short-lived, so ask for a fresh one before"
            " each (re)connect (browsers cannot set headers on `EventSource` or"
            " `WebSocket`). A session token (`client_token`) is refused",
        },
        TOKEN: {
            "type": "apiKey",
            "in": "query",
            "name": "token",
            "description": "the same stream ticket, under its older parameter name",
        },
        BEARER: {"type": "http", "scheme": "bearer", "description": "the same stream ticket"},
    },
    extra_models=(PushedMessage, StreamClosed),
    operations=[
        Operation(
            "GET",
            "/events",
            sse_stream,
            "Server-Sent Events: one event a message",
            {
                200: Reply(
                    "the stream: `id:` the message's id, `data:` its JSON (a `PushedMessage`,"
                    f" or a last `StreamClosed`); a comment every {PING_S:g} s",
                    media_type="text/event-stream",
                    schema={"type": "string", "x-event-data": _MESSAGES},
                ),
                **_REFUSALS,
                429: Reply("this user has too many streams open", StreamError),
            },
            security=(TICKET, TOKEN, BEARER),
            parameters=(
                _LAST_EVENT_ID,
                Param("Last-Event-ID", "header", "as `last_event_id` (EventSource sends it)"),
            ),
        ),
        Operation(
            "GET",
            "/ws",
            websocket_stream,
            "WebSocket: one JSON text frame a message, server to client only",
            {
                101: Reply(
                    "upgraded: text frames of `PushedMessage` JSON; the server pings every"
                    f" {HEARTBEAT_S:g} s. Close codes: {CLOSE_TOKEN_EXPIRED} the session expired"
                    f" (sign in again, reconnect with a fresh ticket),"
                    f" {CLOSE_TOO_MANY_FOR_USER} too many streams for this user,"
                    f" {CLOSE_FULL} this replica is full (retry later)",
                ),
                **_REFUSALS,
            },
            security=(TICKET, TOKEN, BEARER),
            parameters=(
                _LAST_EVENT_ID,
                Param("Upgrade", "header", "`websocket`", {"const": "websocket"}, required=True),
            ),
            extensions={
                "x-websocket": {
                    "server-messages": {"$ref": f"{_SCHEMAS}/PushedMessage"},
                    "client-messages": "ignored",
                    "close-codes": {
                        str(
                            CLOSE_TOKEN_EXPIRED
                        ): "session expired: sign in, reconnect with a fresh ticket",
                        str(CLOSE_TOO_MANY_FOR_USER): "too many streams for this user",
                        str(CLOSE_FULL): "this replica is full: try again later",
                    },
                }
            },
        ),
    ],
)
