"""``paylane operators add NAME --role viewer|support|admin``: an account of the operators'
console (:mod:`paylane_order.operators`), or a new role and password for one that exists
(which also lifts a lockout and ends the operator's open sessions). The password is read
from standard input when it is not a terminal (one line), else prompted for twice without
echo: never an argument, which ``ps`` and the shell's history would show.

``paylane operators remove NAME``: the operator signed out everywhere, and no password
signs them in again (until ``add`` gives them one); the audit log keeps their name.

Both need only ``MYSQL_URL``. Exit code 0 when done, 1 when ``remove`` finds no such
operator, 2 for bad arguments, a refused password or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from paylane_common.runtime.service import command_resources
from paylane_common.runtime.settings import BaseServiceSettings
from paylane_order.operators import (
    PASSWORD_MIN,
    ROLES,
    OperatorError,
    add_operator,
    check_new,
    remove_operator,
)

from .commands import command_settings


def _read_password() -> str | None:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password (at least {PASSWORD_MIN} characters): ")
    if getpass.getpass("again: ") != first:
        print("paylane: the passwords differ", file=sys.stderr)
        return None
    return first


def _add(args: argparse.Namespace) -> int:
    password = _read_password()
    if password is None:
        return 2
    try:
        check_new(args.name, args.role, password)
    except OperatorError as exc:
        print(f"paylane: {exc}", file=sys.stderr)
        return 2
    settings = command_settings(BaseServiceSettings)

    async def main() -> bool:
        async with command_resources(settings, "operators") as opened:
            pool = await opened.pool(maxsize=1)
            return await add_operator(pool, args.name, args.role, password)

    added = asyncio.run(main())
    print(f"{args.name}: {'added' if added else 'changed'}, role {args.role}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    settings = command_settings(BaseServiceSettings)

    async def main() -> int | None:
        async with command_resources(settings, "operators") as opened:
            pool = await opened.pool(maxsize=1)
            return await remove_operator(pool, args.name)

    ended = asyncio.run(main())
    if ended is None:
        print(f"paylane: no operator {args.name}", file=sys.stderr)
        return 1
    print(f"{args.name}: removed, {ended} open session(s) ended")
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    operators = commands.add_parser("operators", help="the operators' console accounts")
    what = operators.add_subparsers(dest="what", required=True)
    add = what.add_parser(
        "add",
        help="add an operator, or give one a new role and password (the password from "
        "stdin or a prompt)",
    )
    add.add_argument("name", help="the sign-in name")
    add.add_argument(
        "--role", required=True, choices=ROLES, help="viewer reads; support and admin also act"
    )
    add.set_defaults(func=_add)
    remove = what.add_parser(
        "remove", help="sign an operator out everywhere; no password signs them in again"
    )
    remove.add_argument("name", help="the sign-in name")
    remove.set_defaults(func=_remove)
