"""TLS to MySQL: ``MYSQL_URL``'s ``?ssl-mode=…&ssl-ca=PATH``, named as the MySQL clients
name them, made into the ``ssl.SSLContext`` both drivers (aiomysql, pymysql) take.

- ``DISABLED`` (also no ``ssl-mode`` at all): no TLS. Unlike the ``mysql`` client, whose
  default is ``PREFERRED``: paylane never encrypts without being asked, so a server that
  requires TLS refuses a URL without ``ssl-mode``, a clear start-up error.
- ``PREFERRED``: TLS when the server offers it, unverified; else plain.
- ``REQUIRED``: TLS or no connection; the certificate is not verified.
- ``VERIFY_CA``: as ``REQUIRED``, and the certificate chain verifies against ``ssl-ca``
  (the system's CAs without it); the host name is not checked.
- ``VERIFY_IDENTITY``: as ``VERIFY_CA``, and the certificate names the URL's host.

A TLS failure at connect (a certificate that does not verify, a server that requires TLS
or offers none) is a configuration error, not an outage: :func:`config_error` says so,
naming ``MYSQL_URL``, and start-up stops instead of waiting for the database (startup.py).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pymysql

from paylane_common.runtime.exceptions import ConfigError

VARIABLE = "MYSQL_URL"

#: pymysql's CR_SSL_CONNECTION_ERROR: TLS required, the server offers none.
_SSL_CONNECTION_ERROR = 2026
#: What MySQL 8 with ``require_secure_transport=ON`` answers a plain connection
#: (ER_SECURE_TRANSPORT_REQUIRED). MariaDB answers ER_ACCESS_DENIED instead, as it does a
#: wrong password: :func:`may_need_tls`.
_SECURE_TRANSPORT_REQUIRED = 3159
ACCESS_DENIED = 1045


class SslMode(StrEnum):
    DISABLED = "DISABLED"
    PREFERRED = "PREFERRED"
    REQUIRED = "REQUIRED"
    VERIFY_CA = "VERIFY_CA"
    VERIFY_IDENTITY = "VERIFY_IDENTITY"


_VERIFYING = (SslMode.VERIFY_CA, SslMode.VERIFY_IDENTITY)
_PARAMETERS = ("ssl-mode", "ssl-ca")


@dataclass(frozen=True)
class MySQLTls:
    """``ssl-mode`` and ``ssl-ca`` of a ``MYSQL_URL``."""

    mode: SslMode = SslMode.DISABLED
    ca: Path | None = None

    @classmethod
    def from_query(cls, query: str | None) -> MySQLTls:
        """From the URL's query (``ssl-mode=VERIFY_CA&ssl-ca=/etc/paylane/ca.pem``; also
        spelled ``ssl_mode``, ``ssl_ca``). Raise ValueError saying what is wrong, also
        when ``ssl-ca`` cannot be read or holds no certificate."""
        given: dict[str, str] = {}
        try:
            pairs = parse_qsl(query or "", keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise ValueError(f"has a malformed query {query!r}") from None
        for key, value in pairs:
            name = key.lower().replace("_", "-")
            if name not in _PARAMETERS:
                raise ValueError(
                    f"has an unknown parameter {key!r} (it takes ssl-mode and ssl-ca only)"
                )
            if name in given:
                raise ValueError(f"gives {name} twice")
            given[name] = value
        mode_text = given.get("ssl-mode", SslMode.DISABLED.value).upper()
        try:
            mode = SslMode(mode_text)
        except ValueError:
            names = ", ".join(m.value for m in SslMode)
            raise ValueError(f"ssl-mode must be one of {names}, not {mode_text!r}") from None
        ca = Path(given["ssl-ca"]) if "ssl-ca" in given else None
        if ca is not None and mode not in _VERIFYING:
            raise ValueError(
                "ssl-ca is used only with ssl-mode=VERIFY_CA or VERIFY_IDENTITY"
                f" (ssl-mode is {mode.value}): add ssl-mode=VERIFY_CA to verify the server"
            )
        tls = cls(mode, ca)
        tls.context()  # a CA file that cannot be read is refused now, not at connect
        return tls

    @property
    def required(self) -> bool:
        """No connection without TLS."""
        return self.mode not in (SslMode.DISABLED, SslMode.PREFERRED)

    def context(self) -> ssl.SSLContext | None:
        """The context for the drivers (None: ``DISABLED``)."""
        if self.mode == SslMode.DISABLED:
            return None
        if self.mode not in _VERIFYING:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        context = ssl.create_default_context()
        if self.ca is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:
                context.load_verify_locations(cafile=str(self.ca))
            except FileNotFoundError:
                raise ValueError(f"ssl-ca {str(self.ca)!r} does not exist") from None
            except ssl.SSLError:  # an OSError too: first
                raise ValueError(
                    f"ssl-ca {str(self.ca)!r} holds no PEM certificate (the server's CA)"
                ) from None
            except OSError as exc:
                raise ValueError(
                    f"ssl-ca {str(self.ca)!r} cannot be read ({exc.strerror})"
                ) from None
        # As the MySQL clients: a provider's CA need not meet Python's stricter X.509
        # profile (3.13 sets VERIFY_X509_STRICT by default); the chain is still verified.
        context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
        context.check_hostname = self.mode == SslMode.VERIFY_IDENTITY
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def aiomysql_args(self) -> dict[str, Any]:
        """``ssl=`` for aiomysql, which encrypts when given a context and the server
        offers TLS (``PREFERRED``; :func:`check_encrypted` makes it required)."""
        context = self.context()
        return {} if context is None else {"ssl": context}

    def pymysql_args(self) -> dict[str, Any]:
        """For pymysql, whose own default is ``PREFERRED`` and which requires TLS when
        given a context."""
        if self.mode == SslMode.DISABLED:
            return {"ssl_disabled": True}
        if self.mode == SslMode.PREFERRED:
            return {}
        return {"ssl": self.context()}

    def describe(self) -> str:
        ca = f"&ssl-ca={self.ca}" if self.ca is not None else ""
        return f"ssl-mode={self.mode.value}{ca}"


def check_encrypted(tls: MySQLTls, encrypted: bool) -> None:
    """ConfigError when ``tls`` requires TLS and the connection is not encrypted (aiomysql
    goes on in plain text when the server, or someone in between, offers no TLS)."""
    if tls.required and not encrypted:
        raise _no_tls_offered(tls)


def may_need_tls(exc: BaseException, tls: MySQLTls) -> bool:
    """A plain connection was denied: a wrong password, or a server (MariaDB's
    ``require_secure_transport``, a user's ``REQUIRE SSL``) that takes this user only over
    TLS. The caller tells them apart by trying once over TLS (:data:`DIAGNOSIS`)."""
    code = exc.args[0] if isinstance(exc, pymysql.err.MySQLError) and exc.args else None
    return code == ACCESS_DENIED and tls.mode == SslMode.DISABLED


#: The one connection that tells "TLS only" from a wrong password (:func:`may_need_tls`):
#: encrypted, unverified, so nothing more is exposed than the plain attempt already did.
DIAGNOSIS = MySQLTls(SslMode.REQUIRED)


def tls_only(tls: MySQLTls) -> ConfigError:
    """The server takes the URL's user only over TLS, which the URL does not ask for."""
    return ConfigError(
        f"{VARIABLE}: the database server accepts only TLS connections"
        " (require_secure_transport, or the user's REQUIRE SSL), and"
        f" {VARIABLE} has {tls.describe()}: add ?ssl-mode=VERIFY_CA&ssl-ca=PATH (the"
        " server's CA)"
    )


def _no_tls_offered(tls: MySQLTls) -> ConfigError:
    return ConfigError(
        f"{VARIABLE} asks for {tls.describe()}, but the database server offers no TLS:"
        " enable TLS on the server, or check what sits between paylane and it"
    )


@contextmanager
def tls_errors(tls: MySQLTls) -> Iterator[None]:
    """Around a connect: a failure that is a configuration error (:func:`config_error`)
    is raised as that ConfigError; any other as it is."""
    try:
        yield
    except Exception as exc:
        error = config_error(exc, tls)
        if error is None:
            raise
        raise error from exc


def config_error(exc: BaseException, tls: MySQLTls) -> ConfigError | None:
    """The configuration error ``exc`` (a failed connect) stands for, if it is one."""
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return ConfigError(
                f"{VARIABLE}: the database server's certificate does not verify with"
                f" {tls.describe()} ({cause.verify_message}): give the CA that signed it"
                " as ssl-ca"
            )
        if isinstance(cause, ssl.SSLError):
            return ConfigError(f"{VARIABLE}: TLS with the database server failed ({cause})")
        if isinstance(cause, pymysql.err.MySQLError) and cause.args:
            code = cause.args[0]
            if code == _SSL_CONNECTION_ERROR and tls.required:
                return _no_tls_offered(tls)
            if code == _SECURE_TRANSPORT_REQUIRED:
                return tls_only(tls)
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes and contexts, and pymysql's ``original_exception``."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        one = todo.pop()
        if one is None or any(one is s for s in seen):
            continue
        seen.append(one)
        todo += [one.__cause__, one.__context__, getattr(one, "original_exception", None)]
    return seen
