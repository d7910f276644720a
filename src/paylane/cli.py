"""The ``paylane`` console command (docs/commands.md)."""

from __future__ import annotations

import argparse
import importlib
import sys

from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.settings import BaseServiceSettings, exit_on_config_error

from . import (
    config_cli,
    demo,
    dev,
    operators_cli,
    refund_cli,
    replay_cli,
    sessions_cli,
    webhooks_cli,
)
from .commands import command_settings

SERVICES = {
    "ingress": "paylane_ingress.main",
    "order": "paylane_order.main",
    "entitlement": "paylane_entitlement.main",
    "notifier": "paylane_notifier.main",
    # order, entitlement and notifier in one process (cohost.py)
    "consumers": "paylane.cohost",
    "sandbox": "paylane_sandbox.main",
    "alert-relay": "paylane.alert_relay",
}


def _migrate(_args: argparse.Namespace) -> int:
    from paylane_common.storage.migrate import migrate

    settings = command_settings(BaseServiceSettings)
    applied = migrate(settings.mysql_url)
    database = settings.mysql.database
    print(f"migrated {database}: " + (", ".join(applied) if applied else "already up to date"))
    return 0


def _cutover(args: argparse.Namespace) -> int:
    from datetime import datetime

    from paylane_common.storage.migrate import CutoverRefused, cutover

    settings = command_settings(BaseServiceSettings)
    at = datetime.fromisoformat(args.at) if args.at else None
    if at is not None and at.tzinfo is None:
        print("--at needs a time zone, e.g. 2026-11-24T09:00:00+08:00", file=sys.stderr)
        return 2
    try:
        moment = cutover(settings.mysql_url, at, force=args.force, if_unset=args.if_unset)
    except CutoverRefused as refused:
        if refused.earlier_than is not None:
            print(
                f"refused: {refused}; the sweep would grant what the backend before paylane"
                " settled in between. Run again with --force if that is what you mean.",
                file=sys.stderr,
            )
            return 1
        print(
            "refused: paylane already announced (and granted) these orders another writer"
            " settled before that moment; the backend before paylane may have granted them"
            " too. Check them, then run again with --force:",
            file=sys.stderr,
        )
        for out_trade_no, paid_at in refused.orders:
            print(f"  {out_trade_no}  paid {paid_at}", file=sys.stderr)
        return 1
    if moment is None:
        print("a cutover was made already: left as it is")
        return 0
    print(f"effects of orders settled elsewhere apply from {moment.isoformat()}Z")
    return 0


#: How to start each dependency, for `paylane deps` (the compose file's services, or the
#: server installed on this machine).
START_HINTS = {
    "rabbitmq": "start it: `deploy/compose.sh up -d rabbitmq`"
    " or, installed locally, `rabbitmq-server -detached`",
    "mysql": "start it: `deploy/compose.sh up -d mysql`"
    " or, installed locally, `sudo service mariadb start` (or mysql)",
}


def _deps(_args: argparse.Namespace) -> int:
    """One try at MYSQL_URL and AMQP_URL: one line for each that is missing."""
    import asyncio
    import logging

    from paylane_common.runtime import startup
    from paylane_common.runtime.outages import describe

    settings = command_settings(BaseServiceSettings)
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)  # we say it below
    missing = 0
    # The server, not the database: `paylane migrate` creates that.
    checks = (
        startup.mysql(settings.mysql_url, database=False),
        startup.rabbitmq(settings.amqp_url),
    )
    for needed in checks:
        try:
            asyncio.run(asyncio.wait_for(needed.reach(), startup.ATTEMPT_TIMEOUT_S))
        except Exception as exc:
            missing += 1
            print(
                f"{needed.name} is not reachable at {needed.where} ({describe(exc)}); "
                + START_HINTS[needed.name],
                file=sys.stderr,
            )
    return 1 if missing else 0


def _topology(_args: argparse.Namespace) -> int:
    """Declare the broker topology with AMQP_URL's identity (one allowed to configure),
    for services running with AMQP_DECLARE_TOPOLOGY=false."""
    import asyncio

    from paylane_common.broker.topology import declare_topology
    from paylane_common.runtime.service import command_resources

    settings = command_settings(BaseServiceSettings)

    async def declare() -> None:
        async with command_resources(settings, "topology") as opened:
            await declare_topology(await (await opened.broker()).channel())

    asyncio.run(declare())
    print("declared the exchange, the stream and the consumer queues")
    return 0


def _serve(args: argparse.Namespace) -> int:
    module = importlib.import_module(SERVICES[args.service])
    module.main()
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    import asyncio

    from paylane_order.reconcile_cli import reconcile
    from paylane_order.settings import OrderSettings

    settings = command_settings(OrderSettings)
    found = asyncio.run(reconcile(settings, once=args.once))
    print(", ".join(f"{k}={v}" for k, v in sorted(found.items())) or "nothing to reconcile")
    return 0


def _reconcile_bills(args: argparse.Namespace) -> int:
    import asyncio
    import json
    from datetime import date

    from paylane_order.reconcile_cli import reconcile_bills
    from paylane_order.settings import OrderSettings

    try:
        day = date.fromisoformat(args.date)
    except ValueError:
        print("--date takes YYYY-MM-DD (a China day)", file=sys.stderr)
        return 2
    settings = command_settings(OrderSettings)
    report = asyncio.run(reconcile_bills(settings, day))
    print(json.dumps(report.to_json(), ensure_ascii=False) if args.json else report.table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paylane", description="WeChat Pay v3 payments as exactly-once business effects"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    migrate = commands.add_parser(
        "migrate", help="create the database in MYSQL_URL if needed and apply migrations"
    )
    migrate.set_defaults(func=_migrate)
    cut = commands.add_parser(
        "cutover",
        help="from now (or --at), paylane grants orders the cloud function settles (none"
        " before the first cutover); run it when the cloud function starts calling paylane",
    )
    cut.add_argument("--at", help="ISO 8601 time with zone (default: now)")
    cut.add_argument(
        "--force",
        action="store_true",
        help="set it even when paylane already announced orders settled before that moment,"
        " or when it is earlier than the cutover in force",
    )
    cut.add_argument(
        "--if-unset", action="store_true", help="only if no cutover was made yet (make run)"
    )
    cut.set_defaults(func=_cutover)
    deps = commands.add_parser(
        "deps", help="check that MYSQL_URL and AMQP_URL answer; say how to start what does not"
    )
    deps.set_defaults(func=_deps)
    topology = commands.add_parser(
        "topology",
        help="declare the RabbitMQ exchange, stream and queues (an identity that may configure)",
    )
    topology.set_defaults(func=_topology)
    serve = commands.add_parser("serve", help="run one service")
    serve.add_argument("service", choices=sorted(SERVICES))
    serve.set_defaults(func=_serve)
    rec = commands.add_parser(
        "reconcile", help="settle orders and refunds whose notification never came"
    )
    rec.add_argument("--once", action="store_true", help="one pass, then exit")
    rec.set_defaults(func=_reconcile)
    rec_what = rec.add_subparsers(dest="what")
    bills = rec_what.add_parser(
        "bills",
        help="compare a day's WeChat Pay trade bill with the orders and refunds; settle "
        "what was paid but not applied, flag the rest for review",
    )
    bills.add_argument("--date", required=True, help="the China day, YYYY-MM-DD")
    bills.add_argument("--json", action="store_true", help="the report as JSON")
    bills.set_defaults(func=_reconcile_bills)
    dev.add_parser(commands)
    demo.add_parser(commands)
    replay_cli.add_parser(commands)
    refund_cli.add_parser(commands)
    sessions_cli.add_parser(commands)
    operators_cli.add_parser(commands)
    config_cli.add_parser(commands)
    webhooks_cli.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:  # e.g. MYSQL_URL's CA does not verify the server: exit 2
        exit_on_config_error(exc)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
