"""Notifier settings (docs/configuration.md, "Notifier")."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from paylane_common.runtime.settings import BaseServiceSettings, NoneIfBlank, TokenVerifyingKeys


class NotifierSettings(BaseServiceSettings):
    http_port: int = Field(8083, ge=1, le=65535)
    admin_port: int = Field(9083, ge=1, le=65535)
    #: The order service's Ed25519 public key(s) (``PUBLIC KEY`` PEM blocks, one after the
    #: other during a rotation): stream tickets are checked with them. The notifier is
    #: internet-facing and holds no key that could mint a token.
    client_token_public_key: TokenVerifyingKeys
    #: Never set: here only so that a private key given to the notifier by mistake is an
    #: error at start rather than a signing key lying on an internet-facing host.
    client_token_private_key: NoneIfBlank[SecretStr] = None
    #: On connect a client gets the state of its orders updated within this window (at
    #: most ``SNAPSHOT_LIMIT`` of them).
    snapshot_window_s: int = Field(86400, ge=0)
    #: The orders an on-connect snapshot holds at the most, newest first.
    snapshot_limit: int = Field(20, ge=0, le=1000)
    #: The snapshot query gives up after this long (the stream goes on with live events).
    snapshot_timeout_s: float = Field(3.0, gt=0, le=30)
    #: Open streams (WebSocket + SSE) this replica holds at the most; past it a WebSocket
    #: is closed with 1013, SSE answers 503 (both "try again later").
    max_connections: int = Field(10_000, ge=1)
    #: Open streams a user (their tabs and devices) may hold on this replica; past it a
    #: WebSocket is closed with 4429, SSE answers 429.
    max_connections_per_user: int = Field(5, ge=1)
    #: Pushes buffered for ``notifier_pushes`` (the operators' console's timeline), written
    #: in one INSERT at most once a second; past it they are dropped and counted. 0: pushes
    #: are not recorded.
    notifier_push_log_buffer: int = Field(10_000, ge=0, le=1_000_000)

    @field_validator("client_token_private_key")
    @classmethod
    def _no_private_key(cls, value: SecretStr | None) -> None:
        if value is not None:
            raise ValueError(
                "must not be given to the notifier: it only checks tokens, with"
                " CLIENT_TOKEN_PUBLIC_KEY; only the order service signs"
            )
        return None
