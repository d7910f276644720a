"""The hub's fan-out never waits on a client: a stalled one is dropped, others unaffected."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import REGISTRY

from paylane_notifier.hub import Control, Hub
from paylane_notifier.messages import ClientMessage

AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
# Users as the shared ``users`` table has them: string ids.
U1, U2, U3, U5 = (f"user-1706345678901-hub00{n}" for n in (1, 2, 3, 5))


def _message(n: int) -> ClientMessage:
    return ClientMessage(
        type="order.paid",
        out_trade_no=f"o{n}",
        status="paid",
        payment_status=None,
        regenerate_count=None,
        event_id=f"e{n}",
        occurred_at=AT,
    )


async def test_a_stalled_client_is_dropped_and_others_get_everything() -> None:
    hub = Hub(queue_size=3)
    dropped_before = _dropped()
    with hub.connection(U1, "ws") as stalled, hub.connection(U1, "sse") as reader:
        received = []
        for n in range(10):
            hub.publish(U1, _message(n))  # returns at once, whether anyone reads or not
            received.append(await reader.get())
        assert stalled.aborted.is_set()
        assert hub.count(U1) == 1
        assert received == [_message(n) for n in range(10)]
        assert hub.publish(U1, _message(10)) == 1  # the dropped client is gone from the hub
    assert _dropped() == dropped_before + 1
    assert hub.count() == 0


async def test_publish_reaches_only_that_users_clients() -> None:
    hub = Hub()
    with hub.connection(U1, "ws") as one, hub.connection(U2, "ws") as two:
        assert hub.publish(U1, _message(1)) == 1
        assert hub.publish(U3, _message(3)) == 0
        assert await one.get() == _message(1)
        assert two.backlog == 0


async def test_close_all_closes_after_what_is_queued_and_refuses_new_clients() -> None:
    hub = Hub(queue_size=3)
    with hub.connection(U1, "sse") as sink:
        hub.publish(U1, _message(1))
        hub.close_all()
        assert hub.closing
        assert [await sink.get(), await sink.get()] == [_message(1), Control.CLOSE]
        assert not sink.aborted.is_set()


async def test_a_full_queue_yields_its_oldest_message_to_the_close_marker() -> None:
    hub = Hub(queue_size=2)
    with hub.connection(U1, "ws") as sink:
        hub.publish(U1, _message(1))
        hub.publish(U1, _message(2))
        hub.close_all()
        assert [await sink.get(), await sink.get()] == [_message(2), Control.CLOSE]


async def test_connection_gauge_follows_clients() -> None:
    hub = Hub()
    before = _connections("ws")
    with hub.connection(U5, "ws"):
        assert _connections("ws") == before + 1
    assert _connections("ws") == before


async def test_resync_is_queued_for_every_client() -> None:
    hub = Hub()
    with hub.connection(U1, "ws") as one, hub.connection(U2, "sse") as two:
        hub.resync()
        assert await one.get() is Control.RESYNC
        assert await two.get() is Control.RESYNC


def _dropped() -> float:
    return REGISTRY.get_sample_value("paylane_notifier_dropped_clients_total") or 0.0


def _connections(transport: str) -> float:
    value = REGISTRY.get_sample_value("paylane_notifier_connections", {"transport": transport})
    return value or 0.0
