"""The exactly-once invariant, checked in the database after a scenario, and its report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from paylane_common.broker.replay import list_dlq
from paylane_common.contract.catalog import DEFAULT_CATALOG
from tests.chaos.harness.driver import WechatDriver
from tests.chaos.harness.env import ChaosEnv
from tests.chaos.harness.state import WORK_QUEUES, in_clause, outbox_counts, query


@dataclass
class Report:
    label: str
    driver: dict[str, int]
    paid: int = 0
    granted: int = 0
    dlq: int = 0
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        d = self.driver
        notes = "".join(f" {k}={v}" for k, v in self.notes.items())
        return (
            f"[chaos] {self.label}: sent={d['sent']} duplicates={d['duplicates']}"
            f" (concurrent {d['concurrent_dups']}) posts={d['posts']} 2xx={d['2xx']}"
            f" 503={d['503']} errors={d['errors']} 4xx={d['4xx']} retried={d['retried']}"
            f" paid={self.paid} granted={self.granted} dlq={self.dlq}"
            f" took={self.seconds:.1f}s{notes}"
        )


async def check_invariant(env: ChaosEnv, driver: WechatDriver, report: Report) -> Report:
    """Every acknowledged notification: its order paid once (with its transaction), one
    grant, one order.paid and one entitlement.granted, the user's regenerations raised
    once; nothing of these orders dead-lettered; and (the outage being short and WeChat
    retrying) every notification acknowledged in the end."""
    nos = [n.order.out_trade_no for n in driver.notifications]
    rows = await query(
        env.pool,
        "SELECT o.out_trade_no, o.status, o.transaction_id, o.package_type,"
        " u.payment_status, u.regenerate_count,"
        " (SELECT COUNT(*) FROM entitlement_grants g"
        "   WHERE g.out_trade_no = o.out_trade_no) AS grants,"
        " (SELECT COUNT(*) FROM payment_logs l"
        "   WHERE l.out_trade_no = o.out_trade_no AND l.kind = 'paid') AS paid_logs,"
        " (SELECT COUNT(*) FROM payment_orders o2 WHERE o2.user_id = o.user_id) AS user_orders"
        " FROM payment_orders o JOIN users u ON u.id = o.user_id WHERE "
        + in_clause("o.out_trade_no", nos),
        *nos,
    )
    by_no = {r["out_trade_no"]: r for r in rows}
    outbox = await outbox_counts(env, nos)
    dead = []
    for queue in WORK_QUEUES:
        letters = await list_dlq(env.connection, queue, timeout=10)
        dead += [d for d in letters if d.correlation_id in set(nos)]
    report.paid = sum(1 for r in rows if r["status"] == "paid")
    report.granted = sum(int(r["grants"]) for r in rows)
    report.dlq = len(dead)

    problems = report.problems
    for d in dead[:5]:
        problems.append(f"dead-lettered {d.correlation_id} ({d.type}) from {d.origin}: {d.reason}")
    for n in driver.notifications:
        no = n.order.out_trade_no
        if not n.acked:
            problems.append(f"{no}: never acknowledged: {dict(n.statuses)}")
            continue
        row = by_no.get(no)
        if row is None:
            problems.append(f"{no}: acknowledged but no order row")
            continue
        grant = DEFAULT_CATALOG[row["package_type"]].regenerate_grant
        expected = {
            "status": "paid",
            "transaction_id": n.transaction_id,
            "grants": 1,
            "paid_logs": 1,
            "order.paid": 1,
            "entitlement.granted": 1,
            "regenerate_count": 3 + grant,
            "payment_status": DEFAULT_CATALOG[row["package_type"]].payment_status,
        }
        actual = {
            "status": row["status"],
            "transaction_id": row["transaction_id"],
            "grants": int(row["grants"]),
            "paid_logs": int(row["paid_logs"]),
            "order.paid": outbox.get((no, "order.paid"), (0, 0))[0],
            "entitlement.granted": outbox.get((no, "entitlement.granted"), (0, 0))[0],
            "regenerate_count": row["regenerate_count"],
            "payment_status": row["payment_status"],
        }
        assert row["user_orders"] == 1, "each order has a user of its own"
        wrong = {k: (actual[k], v) for k, v in expected.items() if actual[k] != v}
        if wrong:
            problems.append(f"{no}: (actual, expected) {wrong}")
    return report


def assert_clean(report: Report) -> None:
    print(report.line())
    if report.problems:
        shown = "\n  ".join(report.problems[:20])
        more = len(report.problems) - 20
        raise AssertionError(
            f"{report.line()}\n{len(report.problems)} problem(s):\n  {shown}"
            + (f"\n  … and {more} more" if more > 0 else "")
        )
