"""The order API's per-key token buckets, on an injected clock."""

from __future__ import annotations

from paylane_order.rate_limits import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_spends_its_minute_at_once_then_one_more_every_share_of_it() -> None:
    clock = Clock()
    limit = RateLimit(6, clock=clock)  # one more every 10 s
    assert [limit.hit("a") for _ in range(6)] == [None] * 6
    assert limit.hit("a") == 10
    clock.now += 4
    assert limit.hit("a") == 6  # refused calls spend nothing
    clock.now += 6
    assert limit.hit("a") is None
    assert limit.hit("a") == 10
    clock.now += 3600  # a long pause refills to the minute's worth, no more
    assert [limit.hit("a") for _ in range(7)] == [None] * 6 + [10]


def test_keys_are_limited_apart_and_zero_is_no_limit() -> None:
    clock = Clock()
    limit = RateLimit(1, clock=clock)
    assert (limit.hit("a"), limit.hit("b")) == (None, None)
    assert limit.hit("a") == 60
    unlimited = RateLimit(0, clock=clock)
    assert all(unlimited.hit("a") is None for _ in range(1000))


def test_the_least_recently_used_keys_are_forgotten_past_the_bound() -> None:
    clock = Clock()
    limit = RateLimit(1, clock=clock, max_keys=2)
    for key in ("a", "b", "c"):  # "a" forgotten: it starts again with a full bucket
        assert limit.hit(key) is None
    assert limit.hit("c") == 60
    assert limit.hit("a") is None
