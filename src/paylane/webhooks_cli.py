"""``paylane webhooks``: the webhook delivery log and what an operator does with it
(docs/commands.md, docs/webhooks.md). Needs only ``MYSQL_URL`` (the order service's
database user may); the order service's replicas send what these commands make due.

- ``deliveries [--failed] [--limit N]``: the latest deliveries, newest first; ``show ID``:
  one delivery's attempts;
- ``resend ID``: that delivery again, now, its schedule from the start;
- ``recover --since T``: every failed delivery since ``T``, again (Svix's "recover");
- ``enable ENDPOINT_ID``: an endpoint paylane disabled (a 410, or failing too long), on
  again.

Exit code 0 when done, 1 for an unknown delivery or endpoint (or one disabled, for
``resend``), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from paylane_common.runtime.service import command_resources
from paylane_common.runtime.settings import BaseServiceSettings
from paylane_order.webhooks.store import WebhookStore

from .commands import command_settings, positive, print_table

T = TypeVar("T")


def _with_store(use: Callable[[WebhookStore], Awaitable[T]]) -> T:
    settings = command_settings(BaseServiceSettings)

    async def main() -> T:
        async with command_resources(settings, "webhooks") as opened:
            return await use(WebhookStore(await opened.pool(maxsize=1)))

    return asyncio.run(main())


def _time(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _deliveries(args: argparse.Namespace) -> int:
    rows = _with_store(lambda store: store.deliveries(failed=args.failed, limit=args.limit))
    print_table(
        "failed webhook deliveries" if args.failed else "webhook deliveries",
        (
            "id",
            "event_id",
            "type",
            "endpoint",
            "status",
            "attempts",
            "last answer",
            "latency ms",
            "next attempt (UTC)",
            "time (UTC)",
        ),
        [
            (
                r["id"],
                r["event_id"],
                r["event_type"],
                r["url"],
                r["status"],
                r["attempts"],
                r["last_status"] if r["last_status"] is not None else (r["last_error"] or ""),
                r["latency_ms"],
                _time(r["next_attempt_at"]) if r["status"] == "pending" else "",
                _time(r["created_at"]),
            )
            for r in rows
        ],
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    rows = _with_store(lambda store: store.attempts(args.id))
    if not rows:
        print(f"paylane: delivery {args.id} has no attempt yet (or does not exist)")
        return 1
    print_table(
        f"attempts of delivery {args.id}",
        ("time (UTC)", "status", "latency ms", "answer", "error"),
        [
            (
                _time(r["attempted_at"]),
                r["status"],
                r["latency_ms"],
                r["response_excerpt"],
                r["error"],
            )
            for r in rows
        ],
    )
    return 0


def _resend(args: argparse.Namespace) -> int:
    outcome = _with_store(lambda store: store.resend(args.id))
    if outcome == "unknown":
        print(f"paylane: no webhook delivery {args.id}", file=sys.stderr)
        return 1
    if outcome == "endpoint_disabled":
        print(
            f"paylane: delivery {args.id}'s endpoint is disabled or deleted: `paylane webhooks"
            " enable ENDPOINT_ID` first",
            file=sys.stderr,
        )
        return 1
    print(f"delivery {args.id}: due now")
    return 0


def _since(text: str) -> datetime:
    """An argparse type: ISO 8601 with a zone, or a date (00:00 UTC), as naive UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("ISO 8601, e.g. 2026-12-01T09:00:00+08:00") from None
    if moment.tzinfo is None:
        if "T" in text or " " in text:
            raise argparse.ArgumentTypeError("a time needs a zone, e.g. +08:00 or Z")
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(tzinfo=None)


def _recover(args: argparse.Namespace) -> int:
    count = _with_store(lambda store: store.recover(args.since))
    print(f"{count} failed deliveries since {args.since:%Y-%m-%d %H:%M:%S} UTC: due now")
    return 0


def _enable(args: argparse.Namespace) -> int:
    if not _with_store(lambda store: store.enable(args.endpoint_id)):
        print(f"paylane: no webhook endpoint {args.endpoint_id}", file=sys.stderr)
        return 1
    print(f"endpoint {args.endpoint_id}: enabled")
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hooks = commands.add_parser("webhooks", help="webhooks to the backend: the delivery log")
    what = hooks.add_subparsers(dest="what", required=True)
    listing = what.add_parser("deliveries", help="the latest deliveries, newest first")
    listing.add_argument("--failed", action="store_true", help="only those that failed")
    listing.add_argument("--limit", type=positive, default=50, help="at most (default 50)")
    listing.set_defaults(func=_deliveries)
    show = what.add_parser("show", help="one delivery's attempts")
    show.add_argument("id", type=positive, help="the delivery's id (deliveries lists them)")
    show.set_defaults(func=_show)
    resend = what.add_parser("resend", help="send a delivery again, now")
    resend.add_argument("id", type=positive, help="the delivery's id")
    resend.set_defaults(func=_resend)
    recover = what.add_parser(
        "recover", help="send every failed delivery since T again (their endpoints enabled)"
    )
    recover.add_argument(
        "--since", type=_since, required=True, help="ISO 8601 with a zone, or a UTC date"
    )
    recover.set_defaults(func=_recover)
    enable = what.add_parser("enable", help="enable an endpoint paylane disabled")
    enable.add_argument("endpoint_id", help="its id (GET /webhooks/endpoints)")
    enable.set_defaults(func=_enable)
