"""Helpers of the notifier tests: rows inserted with SQL, events to publish, and WebSocket /
SSE clients that hand back what they receive."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import aiomysql
from aiohttp import WSMsgType
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from paylane_common.contract import events
from paylane_common.contract.events import Entitlement
from paylane_common.contract.tokens import TokenSigner, private_pem, public_pem
from paylane_common.storage import db
from tests.support import hygiene
from tests.support.clients import next_sse_event
from tests.support.seeding import add_order, add_user, ago

#: The order service's key, which mints the tickets the notifier checks; the notifier
#: gets only ``PUBLIC_KEY``.
TOKEN_KEY = Ed25519PrivateKey.generate()
TOKENS = TokenSigner(TOKEN_KEY)
PUBLIC_KEY = public_pem(TOKEN_KEY)
hygiene.register(private_pem(TOKEN_KEY))
#: Every wait on the network is bounded by this; nothing sleeps.
WAIT_S = 5.0


@dataclass
class Received:
    data: dict[str, Any]
    #: The SSE ``id:`` line (None over WebSocket).
    id: str | None = None


class WsListener:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def next(self, timeout: float = WAIT_S) -> Received:
        async with asyncio.timeout(timeout):
            message = await self.ws.receive()
        assert message.type is WSMsgType.TEXT, message
        return Received(json.loads(message.data))

    async def closed(self, timeout: float = WAIT_S) -> int | None:
        """Wait for the server to end the stream; returns the close code."""
        async with asyncio.timeout(timeout):
            message = await self.ws.receive()
        assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED), message
        return self.ws.close_code


class SseListener:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = WAIT_S) -> Received:
        async with asyncio.timeout(timeout):
            event = await next_sse_event(self.response.content)
        assert event is not None, "the stream ended"
        event_id, data = event
        return Received(data, event_id)

    async def closed(self, timeout: float = WAIT_S) -> bool:
        """Wait for the server to end the stream; False when it was cut off (aborted)."""
        async with asyncio.timeout(timeout):
            try:
                while await self.response.content.readline():
                    pass
            except aiohttp.ClientPayloadError:
                return False
        return True


Listener = WsListener | SseListener


def token_for(user_id: str, ttl_s: int = 3600, signer: TokenSigner = TOKENS) -> str:
    """A stream ticket for ``user_id`` whose session expires in ``ttl_s`` (the stream
    ends then)."""
    return signer.stream_ticket(user_id, session_expires_at=int(time.time()) + ttl_s)


async def insert_user(
    pool: aiomysql.Pool,
    *,
    payment_status: str | None = "free",
    regenerate_count: int | None = 3,
    age_s: int = 3600,
) -> str:
    """A row of the shared ``users`` table, its id in the existing system's format."""
    return await add_user(
        pool,
        openid=f"o-{uuid.uuid4().hex}",
        payment_status=payment_status,
        regenerate_count=regenerate_count,
        created_at=ago(age_s),
        updated_at=ago(age_s),
    )


def last_ms(second_ms: int) -> int:
    """The snapshot id of a row stamped in the second starting at ``second_ms`` (the shared
    tables' ``updated_at`` hold whole seconds): that second's last ms."""
    return second_ms + 999


async def update_user(pool: aiomysql.Pool, user_id: str, **values: Any) -> int:
    """Update the user's columns; returns its new ``updated_at`` in ms (a whole second)."""
    assignments = ", ".join(f"{column} = %s" for column in values)
    async with db.transaction(pool) as cur:
        await cur.execute(
            f"UPDATE users SET {assignments} WHERE id = %s", (*values.values(), user_id)
        )
        await cur.execute(
            "SELECT FLOOR(UNIX_TIMESTAMP(updated_at) * 1000) AS ms FROM users WHERE id = %s",
            (user_id,),
        )
        row = await cur.fetchone()
    return int(row["ms"])


async def insert_order(
    pool: aiomysql.Pool,
    user_id: str,
    *,
    status: str = "paid",
    age_s: int = 60,
    package_type: str = "basic",
    amount: str = "0.01",
) -> tuple[str, int]:
    """A payment_orders row last updated ``age_s`` ago, written as the other writers of the
    shared table write it (yuan ``amount``, none of paylane's columns); returns
    (out_trade_no, updated ms: a whole second)."""
    out_trade_no = uuid.uuid4().hex
    async with db.transaction(pool) as cur:
        await add_order(
            cur,
            user_id,
            out_trade_no,
            generation_id=f"gen-{uuid.uuid4().hex[:12]}",
            package_type=package_type,
            trade_type="JSAPI",
            amount=amount,
            status=status,
            created_at=ago(age_s + 1),
            updated_at=ago(age_s),
        )
        await cur.execute(
            "SELECT FLOOR(UNIX_TIMESTAMP(updated_at) * 1000) AS ms FROM payment_orders"
            " WHERE out_trade_no = %s",
            (out_trade_no,),
        )
        row = await cur.fetchone()
    return out_trade_no, int(row["ms"])


def entitlement(
    event_type: str,
    user_id: str,
    out_trade_no: str,
    payment_status: str = "basic",
    regenerate_count: int = 13,
    revoked_for: str | None = None,
) -> events.Envelope:
    return events.make_event(
        event_type,
        Entitlement.model_validate(
            {
                "user_id": user_id,
                "out_trade_no": out_trade_no,
                "payment_status": payment_status,
                "regenerate_count": regenerate_count,
                "revoked_for": revoked_for,
            }
        ),
    )


def granted_for(
    paid: events.Envelope, payment_status: str = "premium", regenerate_count: int = 33
) -> events.Envelope:
    """The ``entitlement.granted`` the entitlement service stages for ``paid`` (an
    ``order.paid``): the one event the notifier gets of a payment, carrying the order's."""
    return events.make_event(
        events.ENTITLEMENT_GRANTED,
        Entitlement(
            user_id=paid.data["user_id"],
            out_trade_no=paid.data["out_trade_no"],
            payment_status=payment_status,
            regenerate_count=regenerate_count,
            paid=events.PaidOrder(
                event_id=paid.event_id,
                occurred_at=paid.occurred_at,
                generation_id=paid.data.get("generation_id"),
            ),
        ),
    )


def sse_id(moment: datetime) -> str:
    """The SSE id of an instant: integer ms since the epoch."""
    return str((moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1))
