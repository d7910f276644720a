"""Typed settings read once from the environment (DESIGN §2).

Each service declares the subset it needs by subclassing :class:`BaseServiceSettings`;
``load_settings`` turns a validation failure into one clear line naming the variable.
Secrets may come from ``<NAME>_FILE`` (Kubernetes secrets mounted as files).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .catalog import Package, parse_catalog
from .exceptions import ConfigError

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
    "CLIENT_TOKEN_SECRET",
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


def _token_secret_strong(value: SecretStr) -> SecretStr:
    if len(value.get_secret_value().encode()) < 32:
        raise ValueError("must be at least 32 bytes (HMAC-SHA256 key)")
    return value


#: ``CLIENT_TOKEN_SECRET``: the HMAC key of client tokens, at least 32 bytes.
TokenSecret = Annotated[SecretStr, AfterValidator(_token_secret_strong)]


class MySQLDsn:
    """The parts of ``mysql://user:password@host:port/database``."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mysql+pymysql", "mariadb"):
            raise ValueError("must look like mysql://user:password@host:3306/database")
        self.user = unquote(parts.username or "root")
        self.password = unquote(parts.password or "")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 3306
        self.database = parts.path.lstrip("/")
        if not self.database:
            raise ValueError("names no database (mysql://…/paylane)")
        if not self.database.replace("_", "").replace("-", "").isalnum():
            raise ValueError("database name may hold only letters, digits, '_' and '-'")


class BaseServiceSettings(BaseSettings):
    """What every paylane process reads."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)
    #: Variables that may instead be read from the file named by ``<NAME>_FILE``.
    file_variables: ClassVar[tuple[str, ...]] = FILE_VARIABLES

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    mysql_url: str = "mysql://root:@127.0.0.1:3306/paylane"
    http_host: str = "0.0.0.0"
    http_port: int = Field(8080, ge=1, le=65535)
    log_format: Literal["json", "console"] | None = None
    #: Declare the broker topology at start (needs *configure* permission); false: only
    #: check that it exists, for a broker user with least privilege (topology.py).
    amqp_declare_topology: bool = True
    #: Publisher-confirm budget; ingress answers 503 past it.
    publish_timeout_s: float = Field(3.0, gt=0, le=4.5)

    @field_validator("mysql_url")
    @classmethod
    def _check_mysql_url(cls, value: str) -> str:
        MySQLDsn(value)
        return value

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("amqp", "amqps"):
            raise ValueError("must look like amqp://user:password@host:5672/vhost")
        return value

    @property
    def mysql(self) -> MySQLDsn:
        return MySQLDsn(self.mysql_url)

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
    #: Inbox and published outbox rows are deleted after this many days (retention.py);
    #: never fewer than the replay stream keeps events (7 days), which the inbox dedupes …
    retention_days: float = Field(30.0, ge=7)
    #: … checked this often (0: not in-process).
    retention_interval_s: float = Field(3600.0, ge=0)


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
