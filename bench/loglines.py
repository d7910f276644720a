"""What a payment's log lines cost: the lines the four services write for one payment,
through paylane's logging (``configure_logging``: context, level, timestamp, redaction,
JSON), against the inline floor, the same fields dumped by orjson and written as a line.

Measured in a child process (logging is configured per process), writing to /dev/null so
that the disk is not measured; the CPU is the child's own (``time.process_time``). Every
line is written and flushed, as the services write theirs: nothing is sampled away.
"""

from __future__ import annotations

import asyncio
import json
import sys

#: The info lines of one payment, with the context each service binds: the notification
#: answered (ingress), the order paid (order), the plan granted (entitlement), the two
#: pushes (notifier).
_CHILD = r"""
import json, os, sys, time
from datetime import datetime, timezone

import orjson
import structlog

from paylane_common.runtime.logs import configure_logging

ORDER = {"out_trade_no": "PL20261207000000123", "trace_id": "0af7651916cd43dd8448eb211c80319c"}
PAID, GRANTED = "evt_0123456789abcdf0", "evt_0123456789abcdf1"
LINES = [
    ({"request_id": "3f1c9a", "path": "/notify/wechatpay"},
     "notification_published", {"routing_key": "payment.succeeded"}),
    ({"queue": "order.payments", "event_id": "evt_0123456789abcdef", **ORDER,
      "event_type": "payment.succeeded"},
     "order_paid", {"late": False, "source": "notify"}),
    ({"queue": "entitlement.orders", "event_id": PAID, **ORDER, "event_type": "order.paid"},
     "entitlement_granted", {"user_id": 12345, "package": "pro"}),
    ({"queue": "notifier.a1b2c3", "event_id": PAID, **ORDER},
     "event_pushed", {"event_type": "order.paid", "user_id": 12345, "clients": 1}),
    ({"queue": "notifier.a1b2c3", "event_id": GRANTED, **ORDER},
     "event_pushed", {"event_type": "entitlement.granted", "user_id": 12345, "clients": 1}),
]
payments = int(sys.argv[1])
sink = open(os.devnull, "w")
configure_logging("json", stream=sink)
log = structlog.get_logger("paylane")

def paylane():
    for context, event, fields in LINES:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**context)
        log.info(event, **fields)

def inline():
    for context, event, fields in LINES:
        line = {**context, **fields, "event": event, "level": "info",
                "timestamp": datetime.now(timezone.utc).isoformat()}
        print(orjson.dumps(line).decode(), file=sink, flush=True)

out = {}
turns = (("inline", inline), ("paylane", paylane))
for name, write in (*turns, *((f"{n}_again", w) for n, w in turns)):
    write()  # warm: the first line builds structlog's cached logger
    start = time.process_time()
    for _ in range(payments):
        write()
    out[name] = (time.process_time() - start) / payments * 1e6
print(json.dumps(out))
"""


async def measure(payments: int = 20_000) -> dict[str, float]:
    """CPU µs per payment's five lines, paylane's and inline, each measured twice in
    turn (the lower of each pair reported), and their ratio."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(payments), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the log lines' probe failed (exit {child.returncode})")
    raw = json.loads(out)
    paylane = min(raw["paylane"], raw["paylane_again"])
    inline = min(raw["inline"], raw["inline_again"])
    return {
        "lines_per_payment": 5,
        "paylane_us_per_payment": round(paylane, 1),
        "inline_us_per_payment": round(inline, 1),
        "ratio": round(paylane / inline, 2),
    }
