"""A user's sessions: minted here, checked on every call, revoked together.

Each token the order service issues carries the user's session version (``ver``), the
``paylane_user_sessions`` row's (migration 0007; no row: 0). The order API reads the
row on every call a user token makes (one primary-key read, not cached: a revocation
holds from the next request on) and refuses a token of another version with a 401.
Revoking bumps the version, so every session issued before, on any device, stops
working at once; a new sign-in gets the new version.

Stream tickets (the notifier's ``/ws`` and ``/events``) are minted only from a session
that passes that check and live :data:`~paylane_common.contract.tokens.STREAM_TICKET_TTL_S`; the
notifier does not read the version. A stream opened before a revocation goes on until
its session's expiry (``sexp``), when the notifier closes it; the tickets the client
then asks for are refused with its session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiomysql

from paylane_common.contract.tokens import (
    SESSION_AUDIENCE,
    STREAM_TICKET_TTL_S,
    ClientToken,
    TokenError,
    TokenSigner,
)
from paylane_common.storage.db import transaction


class SessionRevoked(TokenError):
    """The token's session version is not the user's: revoked."""


@dataclass(frozen=True)
class Issued:
    token: str
    session: ClientToken


class Sessions:
    def __init__(self, pool: aiomysql.Pool, signer: TokenSigner, ttl_s: int) -> None:
        self._pool = pool
        self._signer = signer
        self.ttl_s = ttl_s

    async def version(self, user_id: str) -> int:
        async with transaction(self._pool) as cur:
            await cur.execute(
                "SELECT version FROM paylane_user_sessions WHERE user_id = %s", (user_id,)
            )
            row = await cur.fetchone()
        return int(row["version"]) if row else 0

    async def issue(self, user_id: str, out_trade_no: str | None = None) -> Issued:
        """A session token (``aud`` paylane-api) of the user's current version."""
        version = await self.version(user_id)
        token = self._signer.session(
            user_id, version=version, out_trade_no=out_trade_no, ttl_s=self.ttl_s
        )
        return Issued(token, self._signer.verifier.verify(token, SESSION_AUDIENCE))

    async def check(self, token: str) -> ClientToken:
        """The session if it is one, unexpired and of the user's current version;
        :class:`TokenError` otherwise (a stream ticket included)."""
        session = self._signer.verifier.verify(token, SESSION_AUDIENCE)
        if session.version != await self.version(session.user_id):
            raise SessionRevoked("session revoked: sign in again")
        return session

    def stream_ticket(self, session: ClientToken) -> tuple[str, int]:
        """A stream ticket (``aud`` paylane-stream) for a checked session's user, ending
        its stream when the session expires; and its lifetime in seconds."""
        ttl_s = max(0, min(STREAM_TICKET_TTL_S, session.expires_at - int(time.time())))
        ticket = self._signer.stream_ticket(
            session.user_id, session_expires_at=session.expires_at, ttl_s=ttl_s
        )
        return ticket, ttl_s

    async def revoke(self, user_id: str) -> int:
        """Bump the user's session version; every token issued before is refused."""
        return await revoke(self._pool, user_id)


async def revoke(pool: aiomysql.Pool, user_id: str) -> int:
    """Bump ``user_id``'s session version (``POST /users/{id}/sessions/revoke``,
    ``paylane sessions revoke``); the new version."""
    async with transaction(pool) as cur:
        await cur.execute(
            "INSERT INTO paylane_user_sessions (user_id, version, revoked_at)"
            " VALUES (%s, 1, UTC_TIMESTAMP(6))"
            " ON DUPLICATE KEY UPDATE version = version + 1, revoked_at = UTC_TIMESTAMP(6)",
            (user_id,),
        )
        await cur.execute(
            "SELECT version FROM paylane_user_sessions WHERE user_id = %s", (user_id,)
        )
        row = await cur.fetchone()
    return int(row["version"])
