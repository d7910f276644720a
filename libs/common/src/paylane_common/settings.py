"""Typed settings read once from the environment (DESIGN §2).

Each service declares the subset it needs by subclassing :class:`BaseServiceSettings`;
``load_settings`` turns a validation failure into one clear line naming the variable.
Secrets may come from ``<NAME>_FILE`` (Kubernetes secrets mounted as files).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import unquote

from pydantic import (
    AfterValidator,
    AmqpDsn,
    BeforeValidator,
    Field,
    MySQLDsn,
    SecretStr,
    TypeAdapter,
    UrlConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .amqp import broker_urls
from .catalog import Package, parse_catalog
from .exceptions import ConfigError
from .identities import Publishers
from .tokens import TokenKeyError, load_signing_key, load_verifying_keys
from .wechatpay.exceptions import WechatPayError
from .wechatpay.keys import load_private_key, load_public_key

#: Variables that may be given as ``<NAME>_FILE`` pointing to a file holding the value.
FILE_VARIABLES = (
    # The URLs carry the broker's and the database's passwords.
    "AMQP_URL",
    "MYSQL_URL",
    "WECHATPAY_APIV3_KEY",
    "WECHATPAY_MERCHANT_PRIVATE_KEY",
    "WECHATPAY_PUBLIC_KEY",
    "INTERNAL_API_SECRET",
    "BACKEND_API_SECRET",
    "CLIENT_TOKEN_PRIVATE_KEY",
    "CLIENT_TOKEN_PUBLIC_KEY",
    "WECHAT_APP_SECRET",
)


class _FileSecretsSource(PydanticBaseSettingsSource):
    """Reads ``FOO`` from the file named by ``FOO_FILE`` when ``FOO`` itself is unset."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        allowed = getattr(self.settings_cls, "file_variables", FILE_VARIABLES)
        for name in self.settings_cls.model_fields:
            env = name.upper()
            if env not in allowed or os.environ.get(env):
                continue
            path = os.environ.get(f"{env}_FILE")
            if not path:
                continue
            try:
                values[name] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{env}_FILE: cannot read {path!r}: {exc.strerror}") from exc
        return values


T = TypeVar("T")


def _none_if_blank(value: Any) -> Any:
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    return None if isinstance(text, str) and not text.strip() else value


#: An optional setting that an empty variable (``FOO=``) leaves unset.
NoneIfBlank = Annotated[T | None, BeforeValidator(_none_if_blank)]


#: The shortest shared secret taken: 32 bytes, an HMAC-SHA256 key's size and beyond any
#: guessing (``paylane dev init`` and ``deploy/compose_secrets.py`` make longer ones).
MIN_SECRET_BYTES = 32


def _api_secret_strong(value: SecretStr) -> SecretStr:
    if len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
        raise ValueError(
            f"must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -base64 32`)"
        )
    return value


#: A secret a caller presents in ``X-Internal-Secret`` (``INTERNAL_API_SECRET``,
#: ``BACKEND_API_SECRET``), at least 32 bytes.
ApiSecret = Annotated[SecretStr, AfterValidator(_api_secret_strong)]


def _token_signing_key_loads(value: SecretStr) -> SecretStr:
    try:
        load_signing_key(value.get_secret_value())
    except TokenKeyError as exc:
        raise ValueError(f"is not an Ed25519 private key PEM ({exc})") from None
    return value


#: ``CLIENT_TOKEN_PRIVATE_KEY``: the Ed25519 key (PKCS#8 PEM) the order service signs
#: client tokens with.
TokenSigningKey = Annotated[SecretStr, AfterValidator(_token_signing_key_loads)]


def _token_verifying_keys_load(value: str) -> str:
    try:
        load_verifying_keys(value)
    except TokenKeyError as exc:
        raise ValueError(f"must be Ed25519 PUBLIC KEY PEM blocks ({exc})") from None
    return value


#: ``CLIENT_TOKEN_PUBLIC_KEY``: one or more Ed25519 ``PUBLIC KEY`` PEM blocks, one after
#: the other (a rotation's old and new key), that client tokens are checked with.
TokenVerifyingKeys = Annotated[str, AfterValidator(_token_verifying_keys_load)]


def _apiv3_key_size(value: SecretStr) -> SecretStr:
    if len(value.get_secret_value().encode()) != 32:
        raise ValueError("must be exactly 32 bytes")
    return value


#: ``WECHATPAY_APIV3_KEY``: the AEAD_AES_256_GCM key of notifications and certificates.
ApiV3Key = Annotated[SecretStr, AfterValidator(_apiv3_key_size)]


def _private_key_loads(value: SecretStr) -> SecretStr:
    try:
        load_private_key(value.get_secret_value())
    except WechatPayError as exc:
        raise ValueError(f"is not a PEM private key ({exc})") from None
    return value


#: An unencrypted RSA private key, PKCS#8 or PKCS#1 PEM.
PrivateKeyPem = Annotated[SecretStr, AfterValidator(_private_key_loads)]


def _public_key_loads(value: str) -> str:
    try:
        load_public_key(value)
    except WechatPayError as exc:
        raise ValueError(f"is not a PEM public key or certificate ({exc})") from None
    return value


#: An RSA public key: a ``PUBLIC KEY`` PEM or an X.509 certificate PEM.
PublicKeyPem = Annotated[str, AfterValidator(_public_key_loads)]


def _http_base_url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


#: The base URL of an HTTP API (``WECHATPAY_API_BASE``, ``WECHAT_API_BASE``), without a
#: trailing ``/`` so that paths join on as ``f"{base}/v3/..."``; ``http://`` is allowed
#: for the sandbox.
HttpBaseUrl = Annotated[str, AfterValidator(_http_base_url)]

#: pydantic's MySQL URL, with MariaDB's scheme and the defaults of a local server.
_MYSQL_DSN: TypeAdapter[MySQLDsn] = TypeAdapter(
    Annotated[
        MySQLDsn,
        UrlConstraints(
            allowed_schemes=["mysql", "mysql+pymysql", "mariadb"],
            default_host="127.0.0.1",
            default_port=3306,
        ),
    ]
)
_AMQP_DSN: TypeAdapter[AmqpDsn] = TypeAdapter(AmqpDsn)

U = TypeVar("U")


def _parse_url(adapter: TypeAdapter[U], url: str, example: str) -> U:
    try:
        return adapter.validate_python(url)
    except ValidationError as exc:
        raise ValueError(f"must look like {example} ({exc.errors()[0]['msg']})") from None


@dataclass(frozen=True)
class MySQLParams:
    """What connecting takes, from ``mysql://user:password@host:port/database``
    (``root``, no password, ``127.0.0.1`` and ``3306`` when the URL leaves them out)."""

    user: str
    password: str = field(repr=False)
    host: str
    port: int
    database: str

    @classmethod
    def from_url(cls, url: str) -> MySQLParams:
        """Raise ValueError saying what is wrong with ``url``."""
        dsn = _parse_url(_MYSQL_DSN, url, "mysql://user:password@host:3306/database")
        database = (dsn.path or "").lstrip("/")
        if not database:
            raise ValueError("names no database (mysql://…/paylane)")
        if not database.replace("_", "").replace("-", "").isalnum():
            raise ValueError("database name may hold only letters, digits, '_' and '-'")
        return cls(
            user=unquote(dsn.username or "root"),
            password=unquote(dsn.password or ""),
            # An IPv6 address without the URL's brackets, as the drivers take it.
            host=(dsn.host or "127.0.0.1").removeprefix("[").removesuffix("]"),
            port=dsn.port or 3306,
            database=database,
        )


def _mysql_url_valid(url: str) -> str:
    MySQLParams.from_url(url)
    return url


def _amqp_url_valid(url: str) -> str:
    """One broker, or the nodes of a cluster (``amqp.broker_urls``), all in one vhost."""
    example = "amqp://user:password@host:5672/vhost (or host1:5672,host2:5672,… for a cluster)"
    urls = broker_urls(url)
    vhosts = set()
    for i, one in enumerate(urls, 1):
        which = f"host {i} of {len(urls)} " if len(urls) > 1 else ""
        try:
            dsn = _parse_url(_AMQP_DSN, one, example)
        except ValueError as exc:
            raise ValueError(f"{which}{exc}") from None
        vhosts.add(dsn.path or "/")
    if len(vhosts) > 1:
        raise ValueError("names several vhosts: every host of a cluster must name the same one")
    return url


#: ``MYSQL_URL``, kept as given (a str for ``db.create_pool`` and ``migrate``);
#: ``MySQLParams.from_url`` reads its parts.
MySQLUrl = Annotated[str, AfterValidator(_mysql_url_valid)]
#: ``AMQP_URL``, kept as given (``amqp.connect`` splits the hosts of a cluster).
AmqpUrl = Annotated[str, AfterValidator(_amqp_url_valid)]


class BaseServiceSettings(BaseSettings):
    """What every paylane process reads."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)
    #: Variables that may instead be read from the file named by ``<NAME>_FILE``.
    file_variables: ClassVar[tuple[str, ...]] = FILE_VARIABLES

    amqp_url: AmqpUrl = "amqp://guest:guest@127.0.0.1:5672/"
    mysql_url: MySQLUrl = "mysql://root:@127.0.0.1:3306/paylane"
    http_host: str = "0.0.0.0"
    http_port: int = Field(8080, ge=1, le=65535)
    #: ``/healthz``, ``/readyz`` and ``/metrics``, never on the public ``HTTP_PORT``
    #: (DESIGN §2): the cluster's probes and Prometheus only. Each service its own default.
    admin_port: int = Field(9080, ge=1, le=65535)
    #: An idle kept-alive connection is closed after this long. Longer than a balancer's
    #: own idle timeout (nginx and cloud balancers: 60 s), so that the balancer, not the
    #: service, closes a connection it might be reusing at that very moment.
    http_keepalive_timeout_s: float = Field(75.0, gt=0, le=75)
    #: A request's line and headers must have arrived this long after its first byte (or
    #: after the connection opened); else the connection is closed.
    http_header_timeout_s: float = Field(10.0, gt=0, le=60)
    log_format: Literal["json", "console"] | None = None
    #: Declare the broker topology at start (needs *configure* permission); false: only
    #: check that it exists, for a broker user with least privilege (topology.py).
    amqp_declare_topology: bool = True
    #: Publisher-confirm budget; ingress answers 503 past it.
    publish_timeout_s: float = Field(3.0, gt=0, le=4.5)
    #: The broker users that publish each event type, checked by the consumers against
    #: the validated AMQP ``user_id`` (identities.py); a service's own user is accepted
    #: too (development: every process is ``guest``). ``AMQP_REPLAY_USER`` runs
    #: ``paylane replay``, which keeps the original publisher in a header.
    amqp_ingress_user: str = Field("paylane-ingress", min_length=1)
    amqp_order_user: str = Field("paylane-order", min_length=1)
    amqp_entitlement_user: str = Field("paylane-entitlement", min_length=1)
    amqp_replay_user: str = Field("paylane", min_length=1)

    @property
    def publishers(self) -> Publishers:
        return Publishers(
            ingress=self.amqp_ingress_user,
            order=self.amqp_order_user,
            entitlement=self.amqp_entitlement_user,
            replay=self.amqp_replay_user,
        )

    @property
    def mysql(self) -> MySQLParams:
        return MySQLParams.from_url(self.mysql_url)

    @model_validator(mode="after")
    def _admin_port_is_another_port(self) -> BaseServiceSettings:
        if self.admin_port == self.http_port:
            raise ValueError("ADMIN_PORT must differ from HTTP_PORT (the public listener)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSecretsSource(settings_cls))


class ConsumerSettings(BaseSettings):
    """Mixin of the services that consume a durable queue into MySQL."""

    #: Deliveries the broker hands over before any is acked.
    consumer_prefetch: int = Field(128, ge=1, le=10_000)
    #: Messages applied together in one transaction at the most (batching.py).
    consumer_batch_max: int = Field(64, ge=1, le=1_000)
    #: A message whose handler keeps failing (not an outage: see outages.py) is tried
    #: this many times, with backoff doubling from a second up to the max delay, then
    #: dead-lettered. An outage of the database uses none of these attempts.
    consumer_retry_attempts: int = Field(8, ge=1, le=100)
    consumer_retry_max_delay_s: float = Field(30.0, gt=0, le=30.0)
    #: A handler still running after this long is cut off (a stalled database) and the
    #: failure treated as any other: an outage when the database does not answer a probe.
    consumer_handler_timeout_s: float = Field(30.0, gt=0, le=600)
    #: While ingress announces it is busy, the consumer waits before each batch, at most
    #: this long in a row, then works a quarter of it regardless (pressure.py). 0: never
    #: waits (consumers with cores of their own). At most 10 minutes: prefetched deliveries
    #: wait unacked meanwhile, and RabbitMQ closes a channel holding one for 30.
    consumer_yield_max_s: float = Field(60.0, ge=0, le=600)
    #: Inbox and published outbox rows are deleted after this many days (retention.py);
    #: never fewer than the replay stream keeps events (7 days), which the inbox dedupes …
    retention_days: float = Field(30.0, ge=7)
    #: … checked this often (0: not in-process).
    retention_interval_s: float = Field(3600.0, ge=0)


class ApiSecretSettings(BaseSettings):
    """Mixin: the two ``X-Internal-Secret`` secrets, each at least 32 bytes, never equal.

    ``INTERNAL_API_SECRET`` is the cloud function's (ingress's internal API) and
    ``BACKEND_API_SECRET`` the app backend's (the order API); the first must open nothing
    on the order API, which an equal second would undo. Each process that reads either
    reads both where it is given both (one env file for every process, as ``make run``
    has), so the mistake is refused wherever it can be seen. Unset or blank: none.
    """

    internal_api_secret: NoneIfBlank[ApiSecret] = None
    #: The app backend's secret on the order API: orders for any user, reads, refunds.
    backend_api_secret: NoneIfBlank[ApiSecret] = None

    @model_validator(mode="after")
    def _secrets_differ(self) -> ApiSecretSettings:
        internal, backend = self.internal_api_secret, self.backend_api_secret
        if internal is not None and backend is not None:
            if internal.get_secret_value() == backend.get_secret_value():
                raise ValueError(
                    "INTERNAL_API_SECRET must differ from BACKEND_API_SECRET: the cloud"
                    " function's secret must open nothing on the order API"
                )
        return self


class CatalogSettings(BaseSettings):
    """Mixin: ``PACKAGE_CATALOG`` (JSON) overrides the built-in package catalog."""

    package_catalog: str | None = None
    #: ``PRICES_EFFECTIVE_AT`` (ISO-8601; UTC when it names no zone): the ``effectiveAt``
    #: and ``updatedAt`` of ``GET /api/prices/current``; unset, when the process loaded
    #: the catalog.
    prices_effective_at: datetime | None = None

    @field_validator("package_catalog")
    @classmethod
    def _check_catalog(cls, value: str | None) -> str | None:
        parse_catalog(value)
        return value

    @property
    def catalog(self) -> dict[str, Package]:
        return parse_catalog(self.package_catalog)


def secret_value(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret is not None else ""


S = TypeVar("S", bound=BaseServiceSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment or raise ConfigError with one clear line."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper() or "settings"
            msg = "is required" if err["type"] == "missing" else err["msg"]
            msg = msg.removeprefix("Value error, ")
            problems.append(f"{name} {msg}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def exit_on_config_error(exc: ConfigError) -> None:
    print(f"paylane: {exc}", file=sys.stderr)
    raise SystemExit(2)
