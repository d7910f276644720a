"""Client tokens: Ed25519-signed JWTs (EdDSA), expiring, naming the user
(docs/security.md, "User tokens").

Only the order service holds the private key (``CLIENT_TOKEN_PRIVATE_KEY``) and mints
tokens (:class:`TokenSigner`); the notifier holds public keys only
(``CLIENT_TOKEN_PUBLIC_KEY``) and can check a token (:class:`TokenVerifier`), never make
one. A token's ``kid`` is its key's RFC 7638 thumbprint, so a verifier holding several
public keys (the old and the new during a rotation) picks the one that signed it.

Two kinds, told apart by their audience:

* a **session** (``aud`` :data:`SESSION_AUDIENCE`): ``Authorization: Bearer`` on the
  order API; it carries the user's session version (``ver``, see
  ``paylane_order.sessions``), which a revocation bumps;
* a **stream ticket** (``aud`` :data:`STREAM_AUDIENCE`): short-lived, minted from a
  session for the notifier's ``/ws`` and ``/events`` only; ``sexp`` is the session's
  expiry, when the stream it opens ends.

Each is refused where the other is meant: a ticket leaking from a URL (logs, history,
referrers) opens no order API call and is worthless a minute later.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from paylane_common.runtime.exceptions import PaylaneError

ISSUER = "paylane"
ALGORITHM = "EdDSA"
#: The order API's tokens (login sessions, ``client_token``).
SESSION_AUDIENCE = "paylane-api"
#: The notifier's stream tickets.
STREAM_AUDIENCE = "paylane-stream"
DEFAULT_TTL_S = 7200
#: A stream ticket is for opening one stream now, not for keeping.
STREAM_TICKET_TTL_S = 60

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)


class TokenError(PaylaneError):
    """A client token is missing, forged, expired, malformed or for another audience."""


class TokenKeyError(PaylaneError):
    """A token key's PEM is not what it must be."""


@dataclass(frozen=True)
class ClientToken:
    user_id: str
    out_trade_no: str | None
    expires_at: int
    audience: str
    #: The user's session version when it was issued (sessions; 0 when absent).
    version: int = 0
    #: A stream ticket's session expiry (epoch seconds): its stream ends then.
    session_expires_at: int | None = None


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's RFC 7638 JWK thumbprint (base64url SHA-256): the tokens' ``kid``."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
    return _b64url(hashlib.sha256(canonical).digest())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_signing_key(pem: str) -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key (PKCS#8 PEM); :class:`TokenKeyError` otherwise."""
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeError):
        raise TokenKeyError("invalid or encrypted private key PEM") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TokenKeyError(
            "not an Ed25519 key (`paylane dev init` or `openssl genpkey -algorithm ed25519`)"
        )
    return key


def load_verifying_keys(pem: str) -> tuple[Ed25519PublicKey, ...]:
    """One or more Ed25519 ``PUBLIC KEY`` PEM blocks, one after the other (a rotation's old
    and new key); :class:`TokenKeyError` on anything else, a private key above all."""
    blocks = list(_PEM_BLOCK.finditer(pem))
    if not blocks:
        raise TokenKeyError("holds no PEM block")
    keys = []
    for block in blocks:
        if block.group(1) != "PUBLIC KEY":
            raise TokenKeyError(f"holds a {block.group(1)}: give only PUBLIC KEY blocks")
        try:
            key = serialization.load_pem_public_key(block.group(0).encode("ascii"))
        except (ValueError, TypeError, UnicodeError):
            raise TokenKeyError("invalid public key PEM") from None
        if not isinstance(key, Ed25519PublicKey):
            raise TokenKeyError("not an Ed25519 public key")
        keys.append(key)
    return tuple(keys)


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def private_pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


class TokenVerifier:
    """Checks tokens against public keys, by ``kid``; cannot make one."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        by_kid = {key_id(key): key for key in keys}
        if not by_kid:
            raise TokenKeyError("no public key to check tokens with")
        self._keys: Mapping[str, Ed25519PublicKey] = MappingProxyType(by_kid)

    @classmethod
    def from_pem(cls, pem: str) -> TokenVerifier:
        return cls(load_verifying_keys(pem))

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, token: str, audience: str) -> ClientToken:
        """The token's claims if a known key signed it for ``audience`` and it has not
        expired; :class:`TokenError` otherwise (never saying which key it tried)."""
        if not token:
            raise TokenError("token missing")
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(header.get("kid", ""))
            if key is None or header.get("alg") != ALGORITHM:
                raise TokenError("token invalid")
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                audience=audience,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
            user_id = claims["sub"]
            if not isinstance(user_id, str) or not user_id:
                raise TypeError("sub")
            version = claims.get("ver", 0)
            session_expires_at = claims.get("sexp")
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise TypeError("ver")
            if session_expires_at is not None and not isinstance(session_expires_at, int):
                raise TypeError("sexp")
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.InvalidAudienceError:
            raise TokenError(
                f"token is not for this API (its audience is not {audience})"
            ) from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise TokenError("token invalid") from None
        return ClientToken(
            user_id=user_id,
            out_trade_no=claims.get("otn"),
            expires_at=claims["exp"],
            audience=audience,
            version=version,
            session_expires_at=session_expires_at,
        )


class TokenSigner:
    """Mints sessions and stream tickets with the private key (the order service only)."""

    def __init__(
        self, private_key: Ed25519PrivateKey, extra_public_keys: Iterable[Ed25519PublicKey] = ()
    ) -> None:
        self._key = private_key
        self.kid = key_id(private_key.public_key())
        #: Checks what this signer makes, and what the other keys (a rotation's) made.
        self.verifier = TokenVerifier((private_key.public_key(), *extra_public_keys))

    @classmethod
    def from_pem(cls, private: str, public: str | None = None) -> TokenSigner:
        extra = load_verifying_keys(public) if public else ()
        return cls(load_signing_key(private), extra)

    def _sign(self, claims: dict[str, object]) -> str:
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def session(
        self,
        user_id: str,
        *,
        version: int,
        out_trade_no: str | None = None,
        ttl_s: int = DEFAULT_TTL_S,
    ) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": user_id,
            "iss": ISSUER,
            "aud": SESSION_AUDIENCE,
            "iat": now,
            "exp": now + ttl_s,
            "ver": version,
        }
        if out_trade_no:
            claims["otn"] = out_trade_no
        return self._sign(claims)

    def stream_ticket(
        self, user_id: str, *, session_expires_at: int, ttl_s: int = STREAM_TICKET_TTL_S
    ) -> str:
        now = int(time.time())
        return self._sign(
            {
                "sub": user_id,
                "iss": ISSUER,
                "aud": STREAM_AUDIENCE,
                "iat": now,
                "exp": min(now + ttl_s, session_expires_at),
                "sexp": session_expires_at,
            }
        )
