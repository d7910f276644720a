"""The operators of the console (``console.py``): their accounts, sign-in with lockout,
sessions, and the audit log of what they do (tables of migration 0014).

- **Passwords** are hashed with scrypt (``hashlib.scrypt``, the standard library's
  binding of OpenSSL's), a random 16-byte salt each, stored as
  ``scrypt$n$r$p$salt$hash``; checked in a thread (it costs tens of milliseconds by
  design) and compared in constant time. An unknown name costs the same hash, so the
  answer's timing does not tell which names exist.
- **Lockout**: :data:`LOCKOUT_AFTER` failed sign-ins in a row lock the account for
  :data:`LOCKOUT_S`; while locked even the right password is refused (and not counted).
  A successful sign-in resets the count. The lock is written to the audit log.
- **Sessions**: a random token in the cookie, only its SHA-256 in
  ``paylane_operator_sessions``, with the session's CSRF token; good for
  :data:`SESSION_TTL_S`, ended by signing out, by a new password or role
  (:func:`add_operator`) and by removal (:func:`remove_operator`). A sign-in made with a
  password that changed while it was being checked makes no session.
- **Removed** operators keep their row (the audit log names them) with the password
  hash :data:`REMOVED`: a sign-in under their name is answered and timed as one under an
  unknown name, and counts toward no lockout.
- **Roles**: ``viewer`` reads; ``support`` and ``admin`` also act (:func:`may_act`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

import aiomysql

from paylane_common.contract.ids import new_row_id
from paylane_common.storage.db import transaction

Role = Literal["viewer", "support", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
#: Failed sign-ins in a row that lock an account, and for how long.
LOCKOUT_AFTER = 5
LOCKOUT_S = 15 * 60
#: How long a console session lasts from sign-in.
SESSION_TTL_S = 8 * 3600
#: scrypt's cost: 16 MiB of memory and about 50 ms a hash.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
NAME_MAX = 64
PASSWORD_MIN = 12
PASSWORD_MAX = 1024


class OperatorError(ValueError):
    """A name, role or password the operators' table refuses, saying why."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(
        ("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest))
    )


#: The password hash of a removed operator (``paylane operators remove``): no password
#: matches it.
REMOVED = "!removed"


def password_matches(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        computed = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(computed, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


#: What an unknown name is checked against, so that it costs a hash too.
_NOBODY = hash_password(secrets.token_urlsafe(16))


def check_new(name: str, role: str, password: str) -> None:
    if not name or len(name) > NAME_MAX or not all(c.isalnum() or c in "._-@" for c in name):
        raise OperatorError(f"name: 1 to {NAME_MAX} letters, digits or . _ - @")
    if role not in ROLES:
        raise OperatorError(f"role: one of {', '.join(ROLES)}")
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise OperatorError(f"password: {PASSWORD_MIN} to {PASSWORD_MAX} characters")


async def add_operator(pool: aiomysql.Pool, name: str, role: str, password: str) -> bool:
    """A new operator, or a new role and password for one who exists (unlocked, and
    signed out everywhere: a reset password or a changed role takes effect at once);
    True when added."""
    check_new(name, role, password)
    hashed = await asyncio.to_thread(hash_password, password)
    async with transaction(pool) as cur:
        await cur.execute("SELECT id FROM paylane_operators WHERE name = %s FOR UPDATE", (name,))
        row = await cur.fetchone()
        if row is None:
            await cur.execute(
                "INSERT INTO paylane_operators (id, name, role, password_hash)"
                " VALUES (%s, %s, %s, %s)",
                (new_row_id("operator"), name, role, hashed),
            )
            return True
        await _set_password_hash(cur, row["id"], hashed, role)
        return False


async def remove_operator(pool: aiomysql.Pool, name: str) -> int | None:
    """Sign ``name`` out everywhere and make their password match nothing; the open
    sessions ended, or None when there is no such operator. The row stays, as the audit
    log names its operators; ``add_operator`` gives it a password again."""
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT id, role FROM paylane_operators WHERE name = %s FOR UPDATE", (name,)
        )
        row = await cur.fetchone()
        if row is None:
            return None
        return await _set_password_hash(cur, row["id"], REMOVED, row["role"])


async def _set_password_hash(cur: aiomysql.Cursor, operator_id: str, hashed: str, role: str) -> int:
    """The operator's new password hash and role, unlocked; their sessions ended (how
    many)."""
    await cur.execute(
        "UPDATE paylane_operators SET role = %s, password_hash = %s, failed_attempts = 0,"
        " locked_until = NULL WHERE id = %s",
        (role, hashed, operator_id),
    )
    await cur.execute(
        "DELETE FROM paylane_operator_sessions WHERE operator_id = %s", (operator_id,)
    )
    return int(cur.rowcount)


def may_act(role: str) -> bool:
    """Whether an operator of ``role`` may refund, query, close, resolve."""
    return role in ("support", "admin")


@dataclass(frozen=True)
class Operator:
    id: str
    name: str
    role: Role

    @property
    def may_act(self) -> bool:
        return may_act(self.role)


@dataclass(frozen=True)
class Session:
    operator: Operator
    csrf_token: str


@dataclass(frozen=True)
class SignIn:
    """A sign-in's outcome: the new session's cookie token, or why not."""

    token: str | None
    refused: Literal["bad_credentials", "locked"] | None = None


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


async def sign_in(
    pool: aiomysql.Pool,
    name: str,
    password: str,
    *,
    lockout_after: int = LOCKOUT_AFTER,
    lockout_s: float = LOCKOUT_S,
    session_ttl_s: float = SESSION_TTL_S,
) -> SignIn:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT id, name, role, password_hash, failed_attempts, locked_until"
            " FROM paylane_operators WHERE name = %s",
            (name[:NAME_MAX],),
        )
        row = await cur.fetchone()
    if row is not None and row["password_hash"] == REMOVED:
        row = None  # answered, and timed, as an unknown name
    stored = row["password_hash"] if row else _NOBODY
    matches = await asyncio.to_thread(password_matches, password[:PASSWORD_MAX], stored)
    if row is None:
        return SignIn(None, "bad_credentials")
    now = _now()
    if row["locked_until"] is not None and row["locked_until"] > now:
        return SignIn(None, "locked")
    if not matches:
        return await _failed(pool, row, now, lockout_after, lockout_s)
    token = secrets.token_urlsafe(32)
    async with transaction(pool) as cur:
        # The password checked is still the operator's: a removal or a new password that
        # committed while it was being hashed (and ended the sessions) is not outrun.
        await cur.execute(
            "SELECT password_hash FROM paylane_operators WHERE id = %s FOR UPDATE", (row["id"],)
        )
        now_stored = await cur.fetchone()
        if now_stored is None or now_stored["password_hash"] != stored:
            return SignIn(None, "bad_credentials")
        await cur.execute(
            "UPDATE paylane_operators SET failed_attempts = 0, locked_until = NULL,"
            " last_sign_in_at = %s WHERE id = %s",
            (now, row["id"]),
        )
        await cur.execute(
            "INSERT INTO paylane_operator_sessions"
            " (token_hash, operator_id, csrf_token, expires_at) VALUES (%s, %s, %s, %s)",
            (
                _token_hash(token),
                row["id"],
                secrets.token_urlsafe(32),
                now + timedelta(seconds=session_ttl_s),
            ),
        )
    return SignIn(token)


async def _failed(
    pool: aiomysql.Pool, row: dict[str, Any], now: datetime, lockout_after: int, lockout_s: float
) -> SignIn:
    """One more failure counted; the account locked when it is the limit's."""
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT failed_attempts FROM paylane_operators WHERE id = %s FOR UPDATE", (row["id"],)
        )
        current = await cur.fetchone()
        failures = int(current["failed_attempts"]) + 1
        lock = failures >= lockout_after
        await cur.execute(
            "UPDATE paylane_operators SET failed_attempts = %s, locked_until = %s WHERE id = %s",
            (
                0 if lock else failures,
                now + timedelta(seconds=lockout_s) if lock else None,
                row["id"],
            ),
        )
        if lock:
            await write_audit(
                cur,
                Operator(row["id"], row["name"], row["role"]),
                "sign_in_locked",
                None,
                f"{failures} failed sign-ins in a row",
                outcome="refused",
                detail=f"locked for {int(lockout_s)} s",
            )
    return SignIn(None, "locked" if lock else "bad_credentials")


async def session(pool: aiomysql.Pool, token: str) -> Session | None:
    """The live session of a cookie's token, or None."""
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT o.id, o.name, o.role, s.csrf_token FROM paylane_operator_sessions s"
            " JOIN paylane_operators o ON o.id = s.operator_id"
            " WHERE s.token_hash = %s AND s.expires_at > %s AND o.password_hash <> %s",
            (_token_hash(token), _now(), REMOVED),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    return Session(Operator(row["id"], row["name"], row["role"]), row["csrf_token"])


async def sign_out(pool: aiomysql.Pool, token: str) -> None:
    async with transaction(pool) as cur:
        await cur.execute(
            "DELETE FROM paylane_operator_sessions WHERE token_hash = %s OR expires_at <= %s",
            (_token_hash(token), _now()),
        )


async def write_audit(
    cur: aiomysql.Cursor,
    operator: Operator,
    action: str,
    out_trade_no: str | None,
    reason: str,
    *,
    before: str | None = None,
    after: str | None = None,
    outcome: Literal["done", "refused", "failed"] = "done",
    detail: str | None = None,
) -> None:
    """One row of the operators' audit log: who, what, why, the state before and after."""
    await cur.execute(
        "INSERT INTO paylane_operator_audit (operator, role, action, out_trade_no, reason,"
        " state_before, state_after, outcome, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            operator.name,
            operator.role,
            action,
            out_trade_no,
            reason[:255],
            before,
            after,
            outcome,
            None if detail is None else detail[:2000],
        ),
    )
