"""Typed settings read once from the environment (docs/configuration.md, generated from
the ``#:`` comments above the fields here and in the services' settings: ``make docs``).

Each service declares the subset it needs by subclassing :class:`BaseServiceSettings`;
``load_settings`` turns a validation failure into one clear line naming the variable.
Secrets may come from ``<NAME>_FILE`` (Kubernetes secrets mounted as files).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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

from paylane_common.broker.amqp import broker_urls
from paylane_common.broker.identities import Publishers
from paylane_common.contract.catalog import Package, parse_catalog
from paylane_common.contract.tokens import TokenKeyError, load_signing_key, load_verifying_keys
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.existing_env import ExistingNamesSource, given_as
from paylane_common.storage.mysql_tls import MySQLTls
from paylane_common.wechatpay.exceptions import WechatPayError
from paylane_common.wechatpay.keys import load_private_key, load_public_key

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
    "WEBHOOK_SECRET",
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


def pem_with_newlines(value: Any) -> Any:
    """A PEM written on one line with literal ``\\n`` (as env files have it) with real
    newlines; anything else as it is."""
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(text, str) and "-----BEGIN" in text and "\\n" in text:
        return text.replace("\\r\\n", "\n").replace("\\n", "\n")
    return value


#: Before a PEM is parsed: literal ``\\n`` turned into newlines.
_PemNewlines = BeforeValidator(pem_with_newlines)


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
TokenSigningKey = Annotated[SecretStr, _PemNewlines, AfterValidator(_token_signing_key_loads)]


def _token_verifying_keys_load(value: str) -> str:
    try:
        load_verifying_keys(value)
    except TokenKeyError as exc:
        raise ValueError(f"must be Ed25519 PUBLIC KEY PEM blocks ({exc})") from None
    return value


#: ``CLIENT_TOKEN_PUBLIC_KEY``: one or more Ed25519 ``PUBLIC KEY`` PEM blocks, one after
#: the other (a rotation's old and new key), that client tokens are checked with.
TokenVerifyingKeys = Annotated[str, _PemNewlines, AfterValidator(_token_verifying_keys_load)]


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
PrivateKeyPem = Annotated[SecretStr, _PemNewlines, AfterValidator(_private_key_loads)]


def _public_key_loads(value: str) -> str:
    try:
        load_public_key(value)
    except WechatPayError as exc:
        raise ValueError(f"is not a PEM public key or certificate ({exc})") from None
    return value


#: An RSA public key: a ``PUBLIC KEY`` PEM or an X.509 certificate PEM.
PublicKeyPem = Annotated[str, _PemNewlines, AfterValidator(_public_key_loads)]


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
    (``root``, no password, ``127.0.0.1`` and ``3306`` when the URL leaves them out) and
    its ``?ssl-mode=…&ssl-ca=…`` (mysql_tls.py)."""

    user: str
    password: str = field(repr=False)
    host: str
    port: int
    database: str
    tls: MySQLTls = field(default_factory=MySQLTls)

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
            tls=MySQLTls.from_query(dsn.query),
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


def default_of(settings_cls: type[BaseSettings], name: str) -> Any:
    """The default of the setting ``name``: for a value object built from the settings
    (``dataclass`` fields), so that each default is written once, on the settings' Field."""
    return settings_cls.model_fields[name].get_default(call_default_factory=True)


class BaseServiceSettings(BaseSettings):
    """What every paylane process reads."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)
    #: Variables that may instead be read from the file named by ``<NAME>_FILE``.
    file_variables: ClassVar[tuple[str, ...]] = FILE_VARIABLES

    #: RabbitMQ. In production each service has its own broker user (docs/operations.md,
    #: "Identities and permissions"). A cluster's nodes as
    #: ``amqp://user:pw@host1:5672,host2:5672,host3:5672/vhost``, tried in turn, all in
    #: one vhost (docs/operations.md, "A RabbitMQ cluster").
    amqp_url: AmqpUrl = "amqp://guest:guest@127.0.0.1:5672/"
    #: MySQL 8 or MariaDB 10.11, ``mysql://user:password@host:port/database`` (user
    #: ``root``, no password, ``127.0.0.1``, ``3306`` when left out). Each service its own
    #: user with only the tables it uses; ``paylane migrate`` and ``paylane cutover`` run
    #: as the migrator (deploy/mysql/grants.sql). TLS as the MySQL clients name it:
    #: ``?ssl-mode=VERIFY_CA&ssl-ca=/path/ca.pem`` verifies the server's certificate
    #: against that CA (``VERIFY_IDENTITY``: and its host name; ``REQUIRED``: encrypted,
    #: unverified; ``PREFERRED``: encrypted if the server offers it; ``DISABLED``, the
    #: default: plain). A CA file that cannot be read, a certificate that does not verify,
    #: or a server that requires TLS from a URL without it stops the process with exit 2
    #: (docs/deployment.md, "TLS to MySQL").
    mysql_url: MySQLUrl = "mysql://root:@127.0.0.1:3306/paylane"
    #: Listen address of the public API (and ``/healthz``).
    http_host: str = "0.0.0.0"
    #: Listen port of the public API (and ``/healthz``); each service its own default.
    http_port: int = Field(8080, ge=1, le=65535)
    #: The second listener, the only one serving ``/readyz`` and ``/metrics`` (the public
    #: ``HTTP_PORT`` answers them 404): the cluster's probes and Prometheus, never the
    #: internet. Must differ from ``HTTP_PORT``. Each service its own default; the
    #: sandbox, a dev tool, serves them on its one port.
    admin_port: int = Field(9080, ge=1, le=65535)
    #: Every listener: an idle kept-alive connection is closed after this long (at most
    #: 75). Keep it longer than the balancer's own idle timeout (nginx and cloud
    #: balancers: 60 s), so that the balancer, not the service, closes a connection it
    #: might be reusing at that very moment.
    http_keepalive_timeout_s: float = Field(75.0, gt=0, le=75)
    #: Every listener: a connection whose request line and headers have not all arrived
    #: this long after the request's first byte (or after it opened) is closed. A request
    #: being handled is never cut: the notifier's WebSocket and SSE streams last as long
    #: as they last.
    http_header_timeout_s: float = Field(10.0, gt=0, le=60)
    #: ``json`` (JSON lines) or ``console``; unset: console on a TTY, else json.
    log_format: Literal["json", "console"] | None = None
    #: Declare the broker topology (exchange, stream, queues) at start, which needs
    #: *configure* permission; ``false``: only check that it exists, for a broker user
    #: with least privilege (``paylane topology`` declares it; topology.py).
    amqp_declare_topology: bool = True
    #: Publisher-confirm budget (at most 4.5 s, inside WeChat's 5 s deadline): ingress
    #: answers 503 ``{"code":"FAIL"}`` past it, so that WeChat retries.
    publish_timeout_s: float = Field(3.0, gt=0, le=4.5)
    #: Ingress's broker user: the consumers take ``payment.*``, ``refund.*`` and
    #: ``order.created`` only from it (payments and refunds also from the order service's
    #: reconciler), checked against the AMQP ``user_id`` RabbitMQ validates
    #: (identities.py). A consumer's own user is always accepted (in development every
    #: process is ``guest``); others are dead-lettered as ``publisher refused``
    #: (docs/operations.md, "Who may publish what").
    amqp_ingress_user: str = Field("paylane-ingress", min_length=1)
    #: The order service's broker user: ``order.*`` is taken only from it (and payments
    #: and refunds its reconciler publishes).
    amqp_order_user: str = Field("paylane-order", min_length=1)
    #: The entitlement service's broker user: ``entitlement.*`` is taken only from it.
    amqp_entitlement_user: str = Field("paylane-entitlement", min_length=1)
    #: The broker user ``paylane replay`` runs under: its copies are taken on the word of
    #: the original publisher they name (header ``x-paylane-original-user``), held to the
    #: event type as on the first delivery.
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
        # Last: the existing system's names, for what paylane's own names left unset.
        return (
            init_settings,
            env_settings,
            _FileSecretsSource(settings_cls),
            ExistingNamesSource(settings_cls),
        )


class ConsumerSettings(BaseSettings):
    """Mixin of the services that consume a durable queue into MySQL."""

    #: Unacked deliveries the broker hands a replica before any is acked.
    consumer_prefetch: int = Field(128, ge=1, le=10_000)
    #: Messages applied together in one transaction at the most (batching.py).
    consumer_batch_max: int = Field(64, ge=1, le=1_000)
    #: A message whose handler keeps failing (not an outage: see outages.py) is tried
    #: this many times, with backoff doubling from a second up to
    #: ``CONSUMER_RETRY_MAX_DELAY_S``, then dead-lettered. An outage of the database uses
    #: none of these attempts: the consumer pauses until the database is back
    #: (docs/operations.md, "Database outage").
    consumer_retry_attempts: int = Field(8, ge=1, le=100)
    #: The longest backoff between two attempts of a failing message (at most 30 s: one
    #: retry queue per delay, ``<queue>.retry.<delay>``, 1 s to 30 s).
    consumer_retry_max_delay_s: float = Field(30.0, gt=0, le=30.0)
    #: A handler (one message or a batch) still running after this long is cut off (a
    #: stalled database) and the failure treated as any other: an outage when the database
    #: does not answer a probe.
    consumer_handler_timeout_s: float = Field(30.0, gt=0, le=600)
    #: While ingress announces it is busy, the consumer waits before each batch, at most
    #: this long in a row, then works a quarter of it regardless (pressure.py). 0: never
    #: waits (consumers with cores of their own). At most 10 minutes: prefetched deliveries
    #: wait unacked meanwhile, and RabbitMQ closes a channel holding one for 30.
    consumer_yield_max_s: float = Field(60.0, ge=0, le=600)
    #: ``inbox`` rows and published ``outbox`` rows are deleted after this many days
    #: (retention.py); never fewer than the replay stream keeps events (7 days), which the
    #: inbox dedupes. ``payment_logs`` are audit and kept.
    retention_days: float = Field(30.0, ge=7)
    #: How often the ``RETENTION_DAYS`` deletion runs (0: not in-process).
    retention_interval_s: float = Field(3600.0, ge=0)


class ApiSecretSettings(BaseSettings):
    """Mixin: the two ``X-Internal-Secret`` secrets, each at least 32 bytes, never equal.

    ``INTERNAL_API_SECRET`` is the cloud function's (ingress's internal API) and
    ``BACKEND_API_SECRET`` the app backend's (the order API); the first must open nothing
    on the order API, which an equal second would undo. Each process that reads either
    reads both where it is given both (one env file for every process, as ``make run``
    has), so the mistake is refused wherever it can be seen. Unset or blank: none.
    """

    #: The cloud function's secret for ingress's internal API (``X-Internal-Secret``,
    #: compared in constant time; docs/cloud-function.md); opens nothing on the order API.
    #: At least 32 bytes, and never equal to ``BACKEND_API_SECRET`` (a process given both,
    #: e.g. one env file for all, refuses to start). Unset: the internal API answers 401.
    internal_api_secret: NoneIfBlank[ApiSecret] = None
    #: The app backend's secret on the order API (``X-Internal-Secret``): orders for any
    #: user, reads, close, refunds (docs/order-api.md); never given to ingress. At least
    #: 32 bytes.
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

    #: JSON ``{name: {price_fen, payment_status, regenerate_grant}}`` replacing the
    #: built-in catalog. Built in: the existing system's prices (basic ¥0.01, premium
    #: ¥29.90) with paylane's own default grants (+20 and +100 regenerations: the existing
    #: system names prices only, so set what your plans give, docs/adoption.md); names are
    #: ``basic`` and ``premium``, the values of ``payment_orders.package_type``. Give
    #: ingress, order and entitlement the same value (the payment gate compares the amount
    #: paid with the order service's catalog).
    package_catalog: str | None = None
    #: ISO 8601 (UTC when it names no zone): the ``effectiveAt`` and ``updatedAt`` of the
    #: seed-shaped price answers (``GET /api/prices/current``); unset: when the process
    #: loaded the catalog.
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


S = TypeVar("S", bound=BaseSettings)


def validation_problems(exc: ValidationError) -> list[str]:
    """Each error of ``exc`` as one line naming the variable (and the existing system's
    name it was given as)."""
    problems = []
    for err in exc.errors():
        name = "_".join(str(p) for p in err["loc"]).upper()
        msg = "is required" if err["type"] == "missing" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        problems.append(f"{name}{given_as(name)} {msg}" if name else msg)
    return problems


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment or raise ConfigError with one clear line."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def exit_on_config_error(exc: ConfigError) -> None:
    print(f"paylane: {exc}", file=sys.stderr)
    raise SystemExit(2)


#: Co-hosted services (``paylane serve consumers``): ``ORDER__MYSQL_URL_FILE`` is the
#: order service's ``MYSQL_URL_FILE``. Two underscores, because settings such as
#: ``ORDER_QUERY_AFTER_S`` already begin with a service's name.
SERVICE_PREFIX_SEPARATOR = "__"


@contextmanager
def environment_of(service: str) -> Iterator[None]:
    """``os.environ`` as ``service`` sees it when it shares a process with others: every
    ``<SERVICE>__NAME`` replaces ``NAME`` (and ``NAME_FILE`` or the ``NAME`` it names:
    one identity each, never a mix). Only while settings are read at start, before any
    task runs, and restored after."""
    prefix = f"{service.upper()}{SERVICE_PREFIX_SEPARATOR}"
    saved = dict(os.environ)
    overrides = {
        key[len(prefix) :]: value for key, value in saved.items() if key.upper().startswith(prefix)
    }
    try:
        for name, value in overrides.items():
            plain = name.removesuffix("_FILE")
            for twin in (plain, f"{plain}_FILE"):
                os.environ.pop(twin, None)
            os.environ[name] = value
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
