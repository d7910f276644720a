"""``paylane refund abnormal list|apply``: the operator's side of an ABNORMAL refund's
remedy (:mod:`paylane_order.abnormal`), with the order service's settings, straight to
MySQL and WeChat Pay (the same code as ``POST /refunds/{no}/apply-abnormal-refund``).

The payee's bank account and name are read from stdin, one a line (prompted, unechoed,
on a terminal), never taken as arguments: they would stay in the shell history and be
visible in the process list. Exit code 0 when done, 1 when WeChat Pay refused or could
not be reached or the refund is not abnormal, 2 for bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

from paylane_common.runtime.service import command_resources
from paylane_common.wechatpay import ABNORMAL_REFUND_TYPES
from paylane_order.abnormal import AbnormalRefundRow, AbnormalRefunds, Remedy
from paylane_order.errors import InvalidRequest, OrderError
from paylane_order.settings import OrderSettings

from .commands import command_settings, positive, print_table

_LISTED: Final = ("out_refund_no", "out_trade_no", "amount_refund", "abnormal_at", "remedy_result")


def _run(work: Callable[[AbnormalRefunds], Awaitable[int]]) -> int:
    settings = command_settings(OrderSettings)

    async def main() -> int:
        async with command_resources(settings, "refund") as opened:
            pool = await opened.pool(maxsize=2)
            api = await opened.wechatpay(settings)
            try:
                return await work(AbnormalRefunds(pool, api.client))
            except OrderError as exc:
                print(f"paylane: {exc.message}", file=sys.stderr)
                return 2 if isinstance(exc, InvalidRequest) else 1

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 130


def _json_value(value: Any) -> Any:
    return value.isoformat() + "Z" if isinstance(value, datetime) else value


def _print_rows(rows: list[AbnormalRefundRow], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps([{k: _json_value(v) for k, v in r.items()} for r in rows]))
        return
    print_table(title, _LISTED, [[r[k] for k in _LISTED] for r in rows])


def _list(args: argparse.Namespace) -> int:
    async def work(refunds: AbnormalRefunds) -> int:
        rows = await refunds.list(args.limit)
        _print_rows(rows, args.json, f"abnormal refunds: {len(rows)}")
        return 0

    return _run(work)


def _read_secret(prompt: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().strip()


def _remedy(args: argparse.Namespace) -> Remedy:
    if args.type == "MERCHANT_BANK_CARD":
        return Remedy("MERCHANT_BANK_CARD", args.bank_type)
    if not args.bank_type:
        raise InvalidRequest("USER_BANK_CARD needs --bank-type")
    account = _read_secret("bank account: ")
    return Remedy("USER_BANK_CARD", args.bank_type, account, _read_secret("holder's name: "))


def _apply(args: argparse.Namespace) -> int:
    try:
        remedy = _remedy(args)
    except InvalidRequest as exc:
        print(f"paylane: {exc.message}", file=sys.stderr)
        return 2

    async def work(refunds: AbnormalRefunds) -> int:
        row = await refunds.apply(args.out_refund_no, remedy)
        _print_rows([row], args.json, f"{args.out_refund_no}: {row['remedy_result']}")
        return 0

    return _run(work)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    refund = commands.add_parser("refund", help="refunds that need an operator")
    kinds = refund.add_subparsers(dest="kind", required=True)
    abnormal = kinds.add_parser(
        "abnormal", help="ABNORMAL refunds (the payer's account cannot take them back)"
    )
    verbs = abnormal.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="the refunds waiting for a remedy")
    listing.add_argument("--limit", type=positive, default=100, help="default 100")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_list)
    apply = verbs.add_parser(
        "apply",
        help="send one to a bank card (apply-abnormal-refund); USER_BANK_CARD reads the"
        " account and the holder's name from stdin, one a line",
    )
    apply.add_argument("out_refund_no")
    apply.add_argument("--type", required=True, choices=ABNORMAL_REFUND_TYPES)
    apply.add_argument(
        "--bank-type", help="WeChat Pay's bank code (USER_BANK_CARD), e.g. ICBC_DEBIT"
    )
    apply.add_argument("--json", action="store_true", help="machine-readable output")
    apply.set_defaults(func=_apply)
