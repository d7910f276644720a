"""``paylane config import ENVFILE`` and ``paylane config check`` (docs/commands.md,
docs/adoption.md "The existing configuration").

``import`` reads an env file of the existing system (``WECHAT_*``, the cloud functions'
``WX_*``, ``DB_*`` / ``DATABASE_URL``) with python-dotenv and writes paylane's settings:
an env file, and each secret in a file of its own (mode 0600) named by ``<NAME>_FILE``.
It reads the names through the one table of :mod:`paylane_common.runtime.existing_env`, as every
process does at start. ``check`` prints what each service would start with, secrets
masked, and every problem; exit 1 when there is one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr, ValidationError

from paylane_common.runtime import existing_env
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.settings import (
    FILE_VARIABLES,
    BaseServiceSettings,
    pem_with_newlines,
    validation_problems,
)

#: The services ``config check`` looks at unless ``--service`` names others (the sandbox,
#: a development tool, only when named).
CHECKED = ("ingress", "order", "entitlement", "notifier")
_SERVICE_NAMES = (*CHECKED, "sandbox")
#: The env file ``config import`` writes in ``--out``, and the directory of its secrets.
ENV_FILE = "paylane.env"
SECRETS_DIR = "secrets"
#: A value written into the env file as it is; anything else is single-quoted.
_PLAIN = re.compile(r"[A-Za-z0-9_./:@,+=%~-]*")


def _settings_classes() -> dict[str, type[BaseServiceSettings]]:
    from .docs import SERVICES

    return SERVICES


def _paylane_names() -> set[str]:
    """Every variable some paylane process reads."""
    return {name.upper() for cls in _settings_classes().values() for name in cls.model_fields}


# --- import --------------------------------------------------------------------------


@dataclass
class ImportPlan:
    """What ``config import`` makes of an env file."""

    #: paylane's name → value, in the file's order where it can be.
    settings: dict[str, str] = field(default_factory=dict)
    #: Lines for the report: ``OLD → NEW``.
    mapped: list[tuple[str, str]] = field(default_factory=list)
    #: The file's own paylane names, taken as they are.
    kept: list[str] = field(default_factory=list)
    #: Old names left because paylane's own name is in the file too.
    ignored: list[tuple[str, str]] = field(default_factory=list)
    #: Names paylane has no setting for.
    unmapped: list[str] = field(default_factory=list)
    #: Why the file cannot be imported (nothing is written).
    problems: list[str] = field(default_factory=list)


def plan_import(values: Mapping[str, str | None]) -> ImportPlan:
    """``values`` (an env file as python-dotenv reads it) in paylane's names."""
    env = {k.upper(): v for k, v in values.items() if v is not None and v.strip()}
    found = existing_env.translate(env)
    known = _paylane_names()
    files = {f"{name}_FILE" for name in FILE_VARIABLES}
    plan = ImportPlan()
    for name, value in env.items():
        if name in existing_env.OLD_NAMES:
            continue
        if name in known or name in files:
            plan.settings[name] = value
            plan.kept.append(name)
        else:
            plan.unmapped.append(name)
    for new, value in found.values.items():
        plan.settings[new] = value
        plan.mapped.append((", ".join(found.origins[new]), new))
    for new, olds in found.shadowed.items():
        plan.ignored.append((", ".join(olds), new))
    plan.problems = [f"{new}: {why}" for new, why in found.problems.items()]
    return plan


def _env_line(name: str, value: str) -> str:
    if _PLAIN.fullmatch(value):
        return f"{name}={value}"
    if "'" in value or "\n" in value:
        raise ValueError(f"{name}: a value with a quote or a newline; give it as {name}_FILE")
    return f"{name}='{value}'"


def _write_private(path: Path, text: str) -> None:
    """``text`` in ``path``, readable by its owner only (also when it existed before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    path.chmod(0o600)


def _print_pairs(title: str, pairs: Iterable[tuple[str, str]]) -> None:
    rows = list(pairs)
    if rows:
        print(title)
        for left, right in rows:
            print(f"  {left} → {right}")


def _import(args: argparse.Namespace) -> int:
    from dotenv import dotenv_values

    source: Path = args.envfile
    if not source.is_file():
        print(f"paylane: {source}: no such file", file=sys.stderr)
        return 2
    plan = plan_import(dotenv_values(source))
    if plan.problems:
        for problem in plan.problems:
            print(f"paylane: {problem}", file=sys.stderr)
        print("nothing written", file=sys.stderr)
        return 1
    out: Path = args.out.absolute()
    secrets = out / SECRETS_DIR
    lines: list[str] = [f"# paylane's settings, written by `paylane config import {source}`."]
    files: dict[Path, str] = {}
    written: dict[str, str] = {}
    try:
        for name, value in plan.settings.items():
            if name in FILE_VARIABLES:
                path = secrets / name.lower()
                files[path] = str(pem_with_newlines(value)).strip() + "\n"
                lines.append(f"{name}_FILE={path}")
                written[name] = f"{name}_FILE ({path.relative_to(out)})"
            else:
                lines.append(_env_line(name, value))
                written[name] = name
    except ValueError as exc:
        print(f"paylane: {exc}; nothing written", file=sys.stderr)
        return 1
    env_path = out / ENV_FILE
    existing = [p for p in (env_path, *files) if p.exists()]
    if existing and not args.force:
        print(
            "refused: " + ", ".join(str(p) for p in existing) + " exist already; --force"
            " overwrites them",
            file=sys.stderr,
        )
        return 1
    secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path, text in files.items():
        _write_private(path, text)
    _write_private(env_path, "\n".join(lines) + "\n")
    print(f"wrote {env_path} and {len(files)} secret file(s) in {secrets} (mode 0600)")
    _print_pairs("mapped:", ((old, written[new]) for old, new in plan.mapped))
    _print_pairs("kept (paylane's own names):", ((n, written[n]) for n in plan.kept))
    _print_pairs(
        "ignored (paylane's own name is in the file too):",
        ((old, f"{new} wins") for old, new in plan.ignored),
    )
    if plan.unmapped:
        print("not mapped (no paylane setting): " + ", ".join(sorted(plan.unmapped)))
    print(f"next: set -a; . {env_path}; set +a; paylane config check")
    return 0


# --- check ---------------------------------------------------------------------------


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_is_secret(arg) for arg in typing.get_args(annotation))


def _masked_url(url: str) -> str:
    """``url`` with its password as ``****`` (each host of a cluster's list kept)."""
    parts = urlsplit(url)
    user, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in user:
        user = user.split(":", 1)[0] + ":****"
    return urlunsplit(parts._replace(netloc=f"{user}{at}{hosts}"))


def shown(name: str, value: str, secret: bool) -> str:
    """How ``config check`` prints a value: never a secret nor a key."""
    text = str(pem_with_newlines(value)).strip()
    if name in ("MYSQL_URL", "AMQP_URL"):
        return _masked_url(text)
    if secret:
        return f"**** ({len(text.encode())} bytes)"
    if "-----BEGIN" in text:
        labels = re.findall(r"-----BEGIN ([A-Z0-9 ]+)-----", text)
        return "PEM " + ", ".join(labels)
    return text


@dataclass
class Effective:
    """One setting as a process would take it: its value and where it comes from."""

    name: str
    value: str
    source: str


def _required_in_mode(info: Any, given: Mapping[str, str]) -> bool:
    """A setting required unless ``WECHATPAY_MODE`` is the one it names (``DIRECT_ONLY``)."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    unless = extra.get("required_unless_mode")
    return unless is not None and given.get("WECHATPAY_MODE", "direct") != unless


def effective(cls: type[BaseServiceSettings], env: Mapping[str, str]) -> list[Effective]:
    """Each setting of ``cls``: from paylane's name, its ``_FILE``, an old name, or the
    default; the value masked (:func:`shown`)."""
    given = {k.upper(): v for k, v in env.items() if v.strip()}
    found = existing_env.translate(given)
    rows = []
    for attr, info in cls.model_fields.items():
        name = attr.upper()
        secret = _is_secret(info.annotation)
        if name in given:
            rows.append(Effective(name, shown(name, given[name], secret), "env"))
        elif name in cls.file_variables and f"{name}_FILE" in given:
            path = given[f"{name}_FILE"]
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                rows.append(Effective(name, f"unreadable ({exc.strerror})", f"{name}_FILE"))
                continue
            rows.append(Effective(name, shown(name, text, secret), f"{name}_FILE={path}"))
        elif name in found.values:
            value = shown(name, found.values[name], secret)
            rows.append(Effective(name, value, ", ".join(found.origins[name])))
        elif info.is_required() or _required_in_mode(info, given):
            rows.append(Effective(name, "unset", "required"))
        else:
            default = info.get_default(call_default_factory=True)
            text = "unset" if default is None else shown(name, str(default), secret)
            rows.append(Effective(name, text, "default"))
    return rows


def service_problems(
    cls: type[BaseServiceSettings],
) -> tuple[BaseServiceSettings | None, list[str]]:
    """``cls`` from the environment, or every problem it has, one line each."""
    try:
        return cls(), []
    except ValidationError as exc:
        return None, validation_problems(exc)
    except ConfigError as exc:
        return None, [str(exc).removeprefix("invalid configuration: ")]


def _reach(settings: Iterable[BaseServiceSettings]) -> list[str]:
    """One try at each distinct MYSQL_URL and AMQP_URL: a line for each that fails."""
    from paylane_common.runtime import startup
    from paylane_common.runtime.outages import describe

    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)  # said below
    needed = {}
    for one in settings:
        needed[("MYSQL_URL", one.mysql_url)] = startup.mysql(one.mysql_url)
        needed[("AMQP_URL", one.amqp_url)] = startup.rabbitmq(one.amqp_url)
    problems = []
    for (name, _url), need in needed.items():
        try:
            asyncio.run(asyncio.wait_for(need.reach(), startup.ATTEMPT_TIMEOUT_S))
        except Exception as exc:
            where = f"{need.name} not reachable at {need.where} ({describe(exc)})"
            problems.append(f"{name}{existing_env.given_as(name)}: {where}")
    return problems


def _check(args: argparse.Namespace) -> int:
    classes = _settings_classes()
    names = args.service or list(CHECKED)
    env = dict(os.environ)
    found = existing_env.translate(env)
    total = 0
    valid = []
    for name in names:
        cls = classes[name]
        settings, problems = service_problems(cls)
        rows = sorted(effective(cls, env), key=lambda row: row.name)
        print(f"{name}:")
        width = max(len(row.name) for row in rows)
        for row in rows:
            print(f"  {row.name:<{width}}  {row.value}  [{row.source}]")
        if settings is not None:
            valid.append(settings)
        for problem in problems:
            print(f"  problem: {problem}")
        total += len(problems)
    if found.shadowed:
        for new, olds in found.shadowed.items():
            print(f"note: {', '.join(olds)} ignored: {new} is set")
    if found.origins:
        used = ", ".join(sorted({o for olds in found.origins.values() for o in olds}))
        print(f"note: the existing system's names read as paylane's: {used}")
    if not args.offline and valid:
        for problem in _reach(valid):
            print(f"problem: {problem}")
            total += 1
    print("no problems" if not total else f"{total} problem(s)")
    return 1 if total else 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser(
        "config", help="the existing system's env file in paylane's names; what a service reads"
    )
    what = config.add_subparsers(dest="what", required=True)
    imp = what.add_parser(
        "import",
        help="read an env file of the existing system (WECHAT_*, WX_*, DB_*, DATABASE_URL)"
        " and write paylane's: an env file, and the secrets in files of their own (0600)",
    )
    imp.add_argument("envfile", type=Path, help="the existing env file (dotenv syntax)")
    imp.add_argument(
        "--out",
        type=Path,
        default=Path("paylane-config"),
        help=f"the directory written: {ENV_FILE} and {SECRETS_DIR}/ (default: ./paylane-config)",
    )
    imp.add_argument("--force", action="store_true", help="overwrite files written before")
    imp.set_defaults(func=_import)
    check = what.add_parser(
        "check",
        help="print each service's effective configuration (secrets masked) and every"
        " problem; exit 1 when there is one",
    )
    check.add_argument(
        "--service",
        action="append",
        choices=sorted(_SERVICE_NAMES),
        help=f"only this service (repeatable; default: {', '.join(CHECKED)})",
    )
    check.add_argument(
        "--offline", action="store_true", help="do not try to reach MYSQL_URL and AMQP_URL"
    )
    check.set_defaults(func=_check)
