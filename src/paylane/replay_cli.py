"""``paylane replay dlq|log|outbox`` and ``paylane dlq list`` (docs/commands.md): the operator's
side of :mod:`paylane_common.broker.replay`. ``log`` replays what came from outside (the stream),
``outbox`` what paylane derived (``order.*``, ``entitlement.*``, from MySQL).

Progress goes to stderr, tables and JSON to stdout. Exit code 0 when everything moved (or
would move), 1 when anything failed or the replay could not run, 2 for bad arguments or
configuration, 130 when interrupted (nothing is lost: unacknowledged dead letters go back
to the DLQ, and the stream is only read).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from paylane_common.broker.replay import (
    DeadLetter,
    ReplayError,
    ReplaySummary,
    list_dlq,
    parse_when,
    replay_dlq,
    replay_log,
    replay_outbox,
)
from paylane_common.contract import events
from paylane_common.runtime.service import CommandResources, command_resources
from paylane_common.runtime.settings import BaseServiceSettings

from .commands import command_settings, positive, print_table

T = TypeVar("T")


# --- output --------------------------------------------------------------------------------


@contextmanager
def _progress(description: str) -> Iterator[Callable[[ReplaySummary], None]]:
    """A progress callback for the library, drawing a bar on stderr."""
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task(description, total=None)

    def update(summary: ReplaySummary) -> None:
        bar.update(task, completed=summary.seen, total=summary.total)

    with bar:
        yield update


def _print_summary(summary: ReplaySummary, group: str) -> None:
    moved = "would move" if summary.dry_run else "moved"
    rows = [
        (name, target, tally.moved, tally.skipped, tally.failed)
        for (name, target), tally in sorted(summary.groups.items())
    ]
    rows.append(("total", "", summary.moved, summary.skipped, summary.failed))
    title = f"{summary.source}: " + ("dry run, nothing moved" if summary.dry_run else "replayed")
    print_table(title, (group, "target", moved, "skipped", "failed"), rows)
    for error, count in summary.errors.most_common():
        print(f"failed ×{count}: {error}", file=sys.stderr)
    if not summary.dry_run and summary.items:
        shown = summary.items[:20]
        ids = ", ".join(str(item.message_id) for item in shown)
        more = f" and {summary.failed - len(shown)} more" if summary.failed > len(shown) else ""
        print(f"not moved (left where they were): {ids}{more}", file=sys.stderr)


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


# --- running -------------------------------------------------------------------------------


def _run(
    work: Callable[[CommandResources], Awaitable[int]],
    settings: BaseServiceSettings | None = None,
) -> int:
    settings = settings or command_settings(BaseServiceSettings)

    async def main() -> int:
        async with command_resources(settings, "replay") as opened:
            try:
                async with asyncio.timeout(15):
                    await opened.broker()
            except Exception as exc:
                print(
                    f"paylane: cannot connect to AMQP_URL: {exc or type(exc).__name__}",
                    file=sys.stderr,
                )
                return 1
            try:
                return await work(opened)
            except ReplayError as exc:
                print(f"paylane: {exc}", file=sys.stderr)
                return 1

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        print(
            "paylane: interrupted; nothing was lost (unacknowledged messages went back to "
            "their queue): run the command again",
            file=sys.stderr,
        )
        return 130


async def _tracked(
    description: str, run: Callable[[Callable[[ReplaySummary], None]], Awaitable[T]]
) -> T:
    with _progress(description) as progress:
        return await run(progress)


def _replay_dlq(args: argparse.Namespace) -> int:
    async def work(opened: CommandResources) -> int:
        connection = await opened.broker()
        summary = await _tracked(
            f"{'checking' if args.dry_run else 'replaying'} {args.queue}",
            lambda progress: replay_dlq(
                connection, args.queue, limit=args.limit, dry_run=args.dry_run, progress=progress
            ),
        )
        _print_summary(summary, "reason")
        return 0 if summary.ok else 1

    return _run(work)


def _window(args: argparse.Namespace) -> tuple[datetime, datetime | None] | None:
    """``--since`` / ``--until`` as times; None (said on stderr) when one does not parse."""
    now = datetime.now(UTC)
    try:
        return parse_when(args.since, now), parse_when(args.until, now) if args.until else None
    except ValueError as exc:
        print(f"paylane: {exc}", file=sys.stderr)
        return None


def _replay_log(args: argparse.Namespace) -> int:
    window = _window(args)
    if window is None:
        return 2
    since, until = window

    async def work(opened: CommandResources) -> int:
        connection = await opened.broker()
        summary = await _tracked(
            f"{'scanning' if args.dry_run else 'replaying'} paylane.log",
            lambda progress: replay_log(
                connection,
                since=since,
                until=until,
                types=args.type,
                to=args.to,
                dry_run=args.dry_run,
                progress=progress,
            ),
        )
        return _print_window(summary, since, until, args.show)

    return _run(work)


def _print_window(
    summary: ReplaySummary, since: datetime, until: datetime | None, show: int
) -> int:
    """What a window replay found (and, in a dry run, would send); the exit code."""
    window = f"{_when(since)} .. {_when(until) or 'now'} UTC"
    print(f"window {window}, {summary.seen} event(s) in it")
    if summary.dry_run and summary.items:
        shown = summary.items[:show]
        print_table(
            f"events that would be replayed (first {len(shown)})",
            ("time (UTC)", "type", "message_id", "out_trade_no", "target"),
            [(_when(i.timestamp), i.type, i.message_id, i.correlation_id, i.target) for i in shown],
        )
    _print_summary(summary, "type")
    return 0 if summary.ok else 1


def _replay_outbox(args: argparse.Namespace) -> int:
    window = _window(args)
    if window is None:
        return 2
    since, until = window
    settings = command_settings(BaseServiceSettings)

    async def work(opened: CommandResources) -> int:
        connection = await opened.broker()
        pool = await opened.pool(maxsize=1)
        summary = await _tracked(
            f"{'scanning' if args.dry_run else 'replaying'} the outbox",
            lambda progress: replay_outbox(
                connection,
                pool,
                since=since,
                until=until,
                producers=args.producer,
                types=args.type,
                to=args.to,
                dry_run=args.dry_run,
                progress=progress,
                publishers=settings.publishers,
            ),
        )
        return _print_window(summary, since, until, args.show)

    return _run(work, settings)


def _dlq_list(args: argparse.Namespace) -> int:
    async def work(opened: CommandResources) -> int:
        connection = await opened.broker()
        letters = await list_dlq(connection, args.queue, limit=args.limit)
        if args.json:
            print(json.dumps(_as_json(args.queue, letters), ensure_ascii=False, indent=2))
            return 0
        print_table(
            f"{args.queue}: {len(letters)} dead letter(s)",
            (
                "message_id",
                "type",
                "out_trade_no",
                "reason",
                "deliveries",
                "failed at (UTC)",
                "origin",
                "replayed",
            ),
            [
                (
                    d.message_id,
                    d.type,
                    d.correlation_id,
                    d.reason,
                    d.delivery_count if d.delivery_count is not None else "?",
                    _when(d.failed_at),
                    d.origin,
                    d.replayed,
                )
                for d in letters
            ],
        )
        for reason, count in Counter(d.reason for d in letters).most_common():
            print(f"{count:>6}  {reason}")
        return 0

    return _run(work)


def _as_json(queue: str, letters: list[DeadLetter]) -> dict[str, Any]:
    return {
        "queue": queue,
        "count": len(letters),
        "by_reason": dict(Counter(d.reason for d in letters).most_common()),
        "dead_letters": [d.as_dict() for d in letters],
    }


def _window_arguments(parser: argparse.ArgumentParser, types: Sequence[str]) -> None:
    """The arguments of a replay by time window (log and outbox)."""
    parser.add_argument(
        "--since", required=True, help="ISO 8601 (2026-11-22T10:00:00Z; naive = UTC) or 30m/2h/1d"
    )
    parser.add_argument("--until", help="same forms; default: when the replay starts")
    parser.add_argument(
        "--type",
        action="append",
        choices=sorted(types),
        metavar="TYPE",
        help=f"only events of this routing key (repeatable): {', '.join(sorted(types))}",
    )
    parser.add_argument(
        "--to", metavar="QUEUE", help="only to this queue (default: every queue bound to the type)"
    )
    parser.add_argument("--dry-run", action="store_true", help="count and list, publish nothing")
    parser.add_argument(
        "--show", type=positive, default=50, help="dry run: events listed (default 50)"
    )


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = commands.add_parser(
        "replay", help="re-drive dead letters or retained events (consumers are idempotent)"
    )
    verbs = replay.add_subparsers(dest="verb", required=True)
    dlq = verbs.add_parser(
        "dlq",
        help="move dead letters back to their queue (confirmed; nothing lost if interrupted)",
    )
    dlq.add_argument("queue", help="a consumer queue (order.payments) or its DLQ (….dlq)")
    dlq.add_argument("--limit", type=positive, help="move at most N")
    dlq.add_argument("--dry-run", action="store_true", help="report what would move")
    dlq.set_defaults(func=_replay_dlq)

    log = verbs.add_parser(
        "log",
        help="re-publish what came from outside (payment.succeeded, refund.*, order.created),"
        " retained in the stream paylane.log",
    )
    # Every type: a stream written before the binding was narrowed still holds the others.
    _window_arguments(log, sorted(events.DATA_MODELS))
    log.set_defaults(func=_replay_log)
    outbox = verbs.add_parser(
        "outbox",
        help="re-publish what paylane derived (order.*, entitlement.*), kept in the services'"
        " outbox in MySQL (RETENTION_DAYS)",
    )
    _window_arguments(outbox, sorted(set(events.DATA_MODELS) - set(events.EXTERNAL_EVENTS)))
    outbox.add_argument(
        "--producer",
        action="append",
        choices=("order", "entitlement"),
        help="only events this service staged (repeatable)",
    )
    outbox.set_defaults(func=_replay_outbox)

    dlq_cmd = commands.add_parser("dlq", help="inspect dead-letter queues")
    dlq_verbs = dlq_cmd.add_subparsers(dest="verb", required=True)
    listing = dlq_verbs.add_parser("list", help="what is dead-lettered and why (consumes nothing)")
    listing.add_argument("queue", help="a consumer queue (order.payments) or its DLQ (….dlq)")
    listing.add_argument("--limit", type=positive, default=100, help="default 100")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_dlq_list)
