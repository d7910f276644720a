"""Dead letters in the operators' console: what is parked in a DLQ and why, and a replay
of one (or, for an admin, of all of a DLQ) back to its queue, with the machinery of
``paylane replay dlq`` (paylane_common.broker.replay: confirmed, ack after confirm).

The console lists and replays **the order service's own DLQs** only
(``order.payments.dlq``, ``order.webhooks.dlq``): its broker identity may read them and
write their queues' forward exchanges, nothing more (deploy/rabbitmq/permissions.json).
A copy it replays carries the original publisher in ``x-paylane-original-user``, which
the order consumer believes from its own identity (identities.py): a message refused
for its publisher stays refused. ``entitlement.orders.dlq`` is counted on the page and
replayed with ``paylane replay dlq`` under the administrator's identity: letting the
order identity republish into entitlement's queue would let it launder another
publisher's events as its own.

Reading a DLQ fetches its messages unacked and hands them back (AMQP has no peek); the
DLQs' delivery limit is huge for that reason (topology.py). Only the first
:data:`SHOWN` of each are read for a page.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection

from paylane_common.broker.replay import DeadLetter, ReplayError, list_dlq, replay_dlq
from paylane_common.broker.topology import ORDER_PAYMENTS, ORDER_WEBHOOKS, QUEUES

#: The DLQs the console reads and replays (see above).
OWN_DLQS = (ORDER_PAYMENTS.dlq, ORDER_WEBHOOKS.dlq)
#: How many dead letters of each DLQ a page reads (the DLQ page, an order's page).
SHOWN = 100


@dataclass(frozen=True)
class DlqView:
    """One DLQ on the page: its depth, and its first dead letters when it is ours."""

    name: str
    messages: int | None
    #: None: not the order service's to read (or no broker).
    letters: list[DeadLetter] | None
    error: str | None = None

    @property
    def own(self) -> bool:
        return self.name in OWN_DLQS


#: A page waits this long for a DLQ's letters, then shows it unread: the broker being
#: away must not take the order page (what every action answers with) down with it.
READ_TIMEOUT_S = 5.0


async def _read(
    connection: AbstractRobustConnection, dlq: str, limit: int
) -> tuple[list[DeadLetter] | None, str | None]:
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            return await list_dlq(connection, dlq, limit=limit), None
    except ReplayError as exc:
        return None, str(exc)
    except TimeoutError:
        return None, f"the broker did not answer within {READ_TIMEOUT_S:g} s"
    except Exception as exc:  # no connection, a closed channel: the page says so
        return None, f"the broker could not be read ({exc.__class__.__name__}: {exc})"


async def dlqs(
    connection: AbstractRobustConnection | None, depths: dict[str, int | None], limit: int = SHOWN
) -> list[DlqView]:
    """Every DLQ of the topology with its depth (``depths``, console_data.queue_depths),
    and the first ``limit`` dead letters of ours."""
    views = []
    for dlq in (spec.dlq for spec in QUEUES):
        letters, error = None, None
        if connection is not None and dlq in OWN_DLQS:
            letters, error = await _read(connection, dlq, limit)
        views.append(DlqView(dlq, depths.get(dlq), letters, error))
    return views


async def of_order(
    connection: AbstractRobustConnection | None, out_trade_no: str, limit: int = SHOWN
) -> list[tuple[str, DeadLetter]]:
    """The dead letters about ``out_trade_no`` (their correlation id) among the first
    ``limit`` of each of our DLQs, with the DLQ each is in."""
    if connection is None:
        return []
    found = []
    for dlq in OWN_DLQS:
        letters, _ = await _read(connection, dlq, limit)
        found += [
            (dlq, letter) for letter in letters or () if letter.correlation_id == out_trade_no
        ]
    return found


class NotReplayed(Exception):
    """A replay the console refuses or that moved nothing, saying why."""


@dataclass(frozen=True)
class Replayed:
    """What a replay moved: in words, and the dead letters it chose."""

    detail: str
    letters: list[DeadLetter]


async def replay(
    connection: AbstractRobustConnection | None,
    dlq: str,
    message_id: str | None,
    out_trade_no: str | None = None,
) -> Replayed:
    """Replay the dead letter ``message_id`` of ``dlq`` (all of them for None; only if
    it is about ``out_trade_no``, when given) to the queue it failed in. The letter is
    chosen in the pass that moves it: a listing just before would hold the DLQ's
    messages unacked until its channel closed, and the replay would not see them."""
    if connection is None:
        raise NotReplayed("the order service has no broker connection")
    if dlq not in OWN_DLQS:
        raise NotReplayed(f"{dlq} is not replayed here: run `paylane replay dlq {dlq}`")
    chosen: list[DeadLetter] = []

    def select(letter: DeadLetter) -> bool:
        wanted = message_id in (None, letter.message_id) and out_trade_no in (
            None,
            letter.correlation_id,
        )
        if wanted:
            chosen.append(letter)
        return wanted

    try:
        summary = await replay_dlq(connection, dlq, select=select)
    except ReplayError as exc:
        raise NotReplayed(str(exc)) from None
    except Exception as exc:  # the broker went away: refused (and audited), not a 500
        moved = f"; {len(chosen)} chosen before it failed, see the DLQ's depth" if chosen else ""
        raise NotReplayed(
            f"the broker failed the replay ({exc.__class__.__name__}: {exc}){moved}"
        ) from None
    failed = "; ".join(summary.errors) or None
    if message_id is not None and summary.moved == 0:
        whose = "" if out_trade_no is None else f" about {out_trade_no}"
        raise NotReplayed(failed or f"no dead letter {message_id}{whose} is ready in {dlq}")
    moved = f"{summary.moved} dead letter(s) replayed from {dlq}"
    if failed:
        raise NotReplayed(f"{moved}, {summary.failed} not: {failed}")
    return Replayed(moved if message_id is None else f"dead letter {message_id}: {moved}", chosen)
