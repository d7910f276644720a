"""Readiness (health.py): one run of the checks at a time, its answer kept a while, a
check added (the shutdown's) heard at once."""

from __future__ import annotations

import asyncio

from paylane_common.runtime.outages import NotReady
from paylane_common.web.health import Readiness, ReadinessCheck


class CountedCheck:
    """A check that answers once released, counting its runs."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        await self.release.wait()


async def test_probes_at_once_share_one_run_and_its_answer_is_kept() -> None:
    check = CountedCheck()
    readiness = Readiness({"mysql": check}, ttl_s=60)
    probes = [asyncio.create_task(readiness.results()) for _ in range(40)]
    await asyncio.sleep(0)  # every probe is waiting on the one run
    check.release.set()
    answers = await asyncio.gather(*probes)
    assert answers == [{"mysql": "ok"}] * 40
    assert await readiness.results() == {"mysql": "ok"}
    assert check.runs == 1


async def test_the_checks_run_again_once_the_answer_is_older_than_its_ttl() -> None:
    check = CountedCheck()
    check.release.set()
    readiness = Readiness({"mysql": check}, ttl_s=0)
    await readiness.results()
    await readiness.results()
    assert check.runs == 2


async def test_a_prober_hanging_up_does_not_cancel_the_others_answer() -> None:
    check = CountedCheck()
    readiness = Readiness({"mysql": check}, ttl_s=60)
    first = asyncio.create_task(readiness.results())
    second = asyncio.create_task(readiness.results())
    await asyncio.sleep(0)
    first.cancel()
    check.release.set()
    assert await second == {"mysql": "ok"}
    assert check.runs == 1


async def test_invalidate_makes_the_next_probe_hear_a_new_check_at_once() -> None:
    mysql = CountedCheck()
    mysql.release.set()
    checks: dict[str, ReadinessCheck] = {"mysql": mysql}
    readiness = Readiness(checks, ttl_s=60)
    assert await readiness.results() == {"mysql": "ok"}

    async def shutting_down() -> None:
        raise NotReady("shutting down")

    checks["shutdown"] = shutting_down
    assert await readiness.results() == {"mysql": "ok"}  # the kept answer
    readiness.invalidate()
    assert await readiness.results() == {"mysql": "ok", "shutdown": "down: shutting down"}
