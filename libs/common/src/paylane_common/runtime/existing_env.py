"""The existing system's environment names, read as paylane's (docs/adoption.md, "The
existing configuration").

A team adopting paylane has env files written for its Node backend (``WECHAT_*``,
``DB_*`` or ``DATABASE_URL``) and for the WeChat Pay V3 cloud functions (``WX_*``). One
table says which paylane setting each of those names is: :data:`RENAMES`, and
:data:`DB_PARTS` for the database URL made of parts. ``paylane config import`` writes
paylane's names from it; every process also accepts the old names at start
(:class:`ExistingNamesSource`, the last source of ``BaseServiceSettings``), with one
warning naming them (:func:`warn_once`). paylane's own name, or its ``<NAME>_FILE``, wins
over an old one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import structlog
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from paylane_common.runtime.exceptions import ConfigError

#: Old name → paylane's name. Several old names may give one setting; given together they
#: must agree.
RENAMES: dict[str, str] = {
    # The Node backend's env file.
    "WECHAT_APPID": "WECHATPAY_APPID",
    "WECHAT_MCHID": "WECHATPAY_MCHID",
    "WECHAT_SERIAL_NO": "WECHATPAY_MERCHANT_SERIAL_NO",
    "WECHAT_PRIVATE_KEY": "WECHATPAY_MERCHANT_PRIVATE_KEY",
    "WECHAT_APIV3_KEY": "WECHATPAY_APIV3_KEY",
    "WECHAT_PUBLIC_KEY": "WECHATPAY_PUBLIC_KEY",
    "WECHAT_PUBLIC_KEY_ID": "WECHATPAY_PUBLIC_KEY_ID",
    "WECHAT_NOTIFY_URL": "WECHATPAY_NOTIFY_URL",
    "DATABASE_URL": "MYSQL_URL",
    # The V3 cloud functions' environment variables, in the spellings they come in.
    "WX_APPID": "WECHATPAY_APPID",
    "WX_MCHID": "WECHATPAY_MCHID",
    "WX_MCH_ID": "WECHATPAY_MCHID",
    "WX_SERIAL_NO": "WECHATPAY_MERCHANT_SERIAL_NO",
    "WX_CERT_SERIAL_NO": "WECHATPAY_MERCHANT_SERIAL_NO",
    "WX_PRIVATE_KEY": "WECHATPAY_MERCHANT_PRIVATE_KEY",
    "WX_APIV3_KEY": "WECHATPAY_APIV3_KEY",
    "WX_API_V3_KEY": "WECHATPAY_APIV3_KEY",
    "WX_PUBLIC_KEY": "WECHATPAY_PUBLIC_KEY",
    "WX_PUBLIC_KEY_ID": "WECHATPAY_PUBLIC_KEY_ID",
    "WX_PUB_KEY_ID": "WECHATPAY_PUBLIC_KEY_ID",
    "WX_NOTIFY_URL": "WECHATPAY_NOTIFY_URL",
    "WX_PAY_NOTIFY_URL": "WECHATPAY_NOTIFY_URL",
}
#: The existing system's database, in parts: together they are ``MYSQL_URL``
#: (``mysql://DB_USER:DB_PASSWORD@DB_HOST:DB_PORT/DB_NAME``; ``root``, no password,
#: ``127.0.0.1`` and ``3306`` when left out, as paylane's own defaults).
DB_PARTS = ("DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME")
#: Every old name paylane reads.
OLD_NAMES = frozenset(RENAMES) | frozenset(DB_PARTS)


@dataclass(frozen=True)
class Translation:
    """What a set of variables says in paylane's names."""

    #: paylane's name → its value, from the old names (not where paylane's is set).
    values: dict[str, str] = field(default_factory=dict)
    #: paylane's name → the old names it was made from.
    origins: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Old names not used because paylane's own name (or its ``_FILE``) is set.
    shadowed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: paylane's name → why the old names cannot give it (disagreeing, incomplete).
    problems: dict[str, str] = field(default_factory=dict)

    def old_names(self) -> list[str]:
        """Every old name given, used or shadowed, sorted."""
        names = [n for names in (*self.origins.values(), *self.shadowed.values()) for n in names]
        return sorted(set(names))


def _given(env: Mapping[str, str]) -> dict[str, str]:
    """The non-blank variables, by their upper-case name (settings are not case sensitive)."""
    return {k.upper(): v for k, v in env.items() if v.strip()}


def _same(value: str) -> str:
    """What two old values are compared as: a PEM with literal ``\\n`` is the same PEM."""
    return value.strip().replace("\\r\\n", "\n").replace("\\n", "\n")


def _mysql_url(parts: dict[str, str]) -> str:
    if "DB_NAME" not in parts:
        raise ValueError(f"{', '.join(parts)} without DB_NAME: the database is not named")
    port = parts.get("DB_PORT", "3306").strip()
    if not port.isdigit():
        raise ValueError(f"DB_PORT must be a port number, not {port!r}")
    host = parts.get("DB_HOST", "127.0.0.1").strip()
    if ":" in host:  # an IPv6 address, in the URL's brackets
        host = f"[{host.strip('[]')}]"
    user = quote(parts.get("DB_USER", "root").strip(), safe="")
    password = quote(parts.get("DB_PASSWORD", ""), safe="")
    name = parts["DB_NAME"].strip()
    return f"mysql://{user}:{password}@{host}:{port}/{name}"


def translate(env: Mapping[str, str]) -> Translation:
    """The old names in ``env`` as paylane's settings (``os.environ``, or an env file)."""
    given = _given(env)
    #: paylane's name → (old names, value or the reason there is none).
    candidates: dict[str, list[tuple[tuple[str, ...], str | ValueError]]] = {}
    for old, new in RENAMES.items():
        if old in given:
            candidates.setdefault(new, []).append(((old,), given[old]))
    parts = {name: given[name] for name in DB_PARTS if name in given}
    if parts:
        try:
            url: str | ValueError = _mysql_url(parts)
        except ValueError as exc:
            url = exc
        candidates.setdefault("MYSQL_URL", []).append((tuple(parts), url))
    result = Translation()
    for new, found in candidates.items():
        olds = tuple(name for names, _ in found for name in names)
        if new in given or f"{new}_FILE" in given:
            result.shadowed[new] = olds
            continue
        values = [value for _, value in found]
        errors = [value for value in values if isinstance(value, ValueError)]
        if errors:
            result.problems[new] = str(errors[0])
        elif len({_same(str(value)) for value in values}) > 1:
            result.problems[new] = f"{' and '.join(olds)} differ: give one value"
        else:
            result.values[new] = str(values[0])
            result.origins[new] = olds
    return result


#: What this process took from old names (paylane's name → the old ones), and what it
#: left because paylane's own name was set: for the one warning and for error messages.
_USED: dict[str, tuple[str, ...]] = {}
_SHADOWED: dict[str, tuple[str, ...]] = {}
_warned = False


def given_as(name: str) -> str:
    """`` (given as WECHAT_MCHID)`` when this process took setting ``name`` from old names,
    else ``""``: an error about it names what the operator wrote."""
    olds = _USED.get(name.upper())
    return f" (given as {', '.join(olds)})" if olds else ""


def warn_once() -> None:
    """One warning per process naming the old names it read (after logging is set up)."""
    global _warned
    if _warned or not (_USED or _SHADOWED):
        return
    _warned = True
    structlog.get_logger("paylane.config").warning(
        "existing_config_names",
        used={new: list(olds) for new, olds in sorted(_USED.items())},
        ignored={new: list(olds) for new, olds in sorted(_SHADOWED.items())},
        hint="the existing system's names are read as paylane's; `paylane config import"
        " ENVFILE` writes paylane's names (docs/adoption.md)",
    )


class ExistingNamesSource(PydanticBaseSettingsSource):
    """The old names in the environment, for the settings of ``settings_cls`` that nothing
    else set (it is the last source). Old names that disagree stop the process when the
    setting is one it reads."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = translate(os.environ)
        fields = {name.upper(): name for name in self.settings_cls.model_fields}
        problems = [f"{new}: {why}" for new, why in found.problems.items() if new in fields]
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        values: dict[str, Any] = {}
        for new, value in found.values.items():
            if new in fields:
                values[fields[new]] = value
                _USED[new] = found.origins[new]
        for new, olds in found.shadowed.items():
            if new in fields:
                _SHADOWED[new] = olds
        return values
