"""The docker-compose stack as users run it (issue: containers built, booted and paying).

`make up` builds the image and brings the stack up with the sandbox: migrate and grants
run once, the four services and the sandbox turn healthy. Then one payment goes through
the containers as a mini-program user makes it: sign in, order, pay in the sandbox, WeChat's
notification acknowledged by ingress, the order paid, the user upgraded, the push on the
WebSocket. A restart (down and up, volumes kept) loses no row and no message; Prometheus
(profile "monitoring") scrapes every service; a service with a missing secret or
variable stops at start naming it; readiness fails while the broker or the database is
down. `make down` ends it (the test then removes its volumes).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.compose_stack import (
    URLS,
    ComposeStack,
    engine_cli,
    pay_one_order,
    wait_until,
)

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

SERVICES = ("ingress", "order", "entitlement", "notifier", "sandbox")
#: A message parked in a dead-letter queue before the restart: it must be there after.
PARKED_QUEUE = "order.payments.dlq"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    stack = ComposeStack.create(tmp_path_factory.mktemp("compose"))
    try:
        stack.make("up")
        yield stack
    finally:
        try:
            stack.make("down")
        finally:
            stack.down("--volumes", "--remove-orphans")


#: What the payment test leaves for the restart test.
paid: dict[str, Any] = {}


def http_json(method: str, url: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


def test_make_up_brings_every_service_up_healthy(stack: ComposeStack) -> None:
    states = stack.states()
    for one_shot in ("migrate", "grants"):
        assert states[one_shot]["State"] == "exited", states[one_shot]
        assert states[one_shot]["ExitCode"] == 0, states[one_shot]
    for name in (*SERVICES, "rabbitmq", "mysql"):
        assert states[name]["State"] == "running", states[name]
        assert states[name]["Health"] == "healthy", states[name]


def test_the_image_runs_as_10001_on_a_read_only_root(stack: ComposeStack) -> None:
    assert stack.exec("order", "id", "-u").stdout.strip() == "10001"
    denied = stack.exec("order", "touch", "/app/x", check=False)
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr


async def test_one_payment_through_the_containers(stack: ComposeStack) -> None:
    payment = await pay_one_order()
    rows = stack.sql(
        "SELECT o.status, u.payment_status FROM payment_orders o JOIN users u ON u.id = o.user_id"
        f" WHERE o.out_trade_no = '{payment['no']}'"
    )
    assert rows == [["paid", "premium"]]
    paid.update(payment)


def test_make_demo_pays_through_the_stack(stack: ComposeStack) -> None:
    """`make demo` as the README has it, against `make up`'s stack: one payment, printed
    as a timeline, ending with the user upgraded."""
    out = stack.make("demo").stdout
    assert "pushed          order.paid: status paid" in out, out
    assert "pushed          entitlement.granted: payment_status premium" in out, out
    assert "GET /orders     status paid" in out, out


def test_readiness_fails_while_the_broker_or_the_database_is_down(stack: ComposeStack) -> None:
    """The healthcheck compose runs (/readyz on the admin port) fails while a dependency is
    down, and passes again once it is back."""

    def ready(service: str) -> bool:
        check = ("python", "/app/healthcheck.py", "/readyz")
        return stack.exec(service, *check, check=False).returncode == 0

    for dependency, dependants in (("rabbitmq", ("ingress", "order")), ("mysql", ("order",))):
        stack.run("stop", dependency)
        try:
            for service in dependants:
                unready = f"{service} unready without {dependency}"
                wait_until(lambda s=service: not ready(s), unready)
        finally:
            stack.up(dependency)
        for service in dependants:
            wait_until(lambda s=service: ready(s), f"{service} ready again", seconds=120)


def _management(stack: ComposeStack, method: str, path: str, body: Any = None) -> Any:
    password = (stack.secrets / "rabbitmq_password").read_text().strip()
    url = f"{URLS['rabbitmq']}/api{path}"
    request = urllib.request.Request(url, method=method)
    manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    manager.add_password(None, url, "paylane", password)
    opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(manager))
    data = None if body is None else json.dumps(body).encode()
    request.add_header("Content-Type", "application/json")
    with opener.open(request, data=data, timeout=30) as response:
        return json.loads(response.read() or b"null")


#: Rows the services rewrite on their own as time passes: a job's lease (who holds it
#: until when), not data.
CHANGING_TABLES = {"paylane_locks"}


def _table_checksums(stack: ComposeStack) -> dict[str, str]:
    """Table -> MySQL's CHECKSUM TABLE of it (every row, every column)."""
    tables = [row[0] for row in stack.sql("SHOW TABLES") if row[0] not in CHANGING_TABLES]
    rows = stack.sql("CHECKSUM TABLE " + ", ".join(f"`{t}`" for t in tables))
    return {name.split(".", 1)[1]: checksum for name, checksum in rows}


def test_a_restart_keeps_every_row_and_message(stack: ComposeStack) -> None:
    assert paid, "the payment test runs first"
    marker = f"parked-{uuid.uuid4().hex[:8]}"
    routed = _management(
        stack,
        "POST",
        "/exchanges/%2F/amq.default/publish",
        {
            "routing_key": PARKED_QUEUE,
            "payload": marker,
            "payload_encoding": "string",
            "properties": {"delivery_mode": 2},
        },
    )
    assert routed == {"routed": True}
    before = _table_checksums(stack)
    assert before["payment_orders"] != "0" and before["users"] != "0", before

    stack.run("down")  # no --volumes: what `make down` does
    stack.up()

    # Every row of every table, checksummed: the same after the restart.
    assert _table_checksums(stack) == before
    status, view = http_json(
        "GET", f"{URLS['order']}/orders/{paid['no']}", Authorization=f"Bearer {paid['token']}"
    )
    assert status == 200, view
    assert (view["status"], view["payment_status"]) == ("paid", "premium")
    assert view["regenerate_count"] == paid["regenerate_count"]  # granted once, not again
    messages = _management(
        stack,
        "POST",
        f"/queues/%2F/{PARKED_QUEUE}/get",
        {"count": 10, "ackmode": "reject_requeue_true", "encoding": "auto"},
    )
    assert marker in [m["payload"] for m in messages]


def test_prometheus_scrapes_every_service(stack: ComposeStack) -> None:
    # Grafana has no stand-in here: Prometheus alone, with the monitoring profile.
    stack.up("prometheus", COMPOSE_PROFILES="sandbox,monitoring")

    def targets() -> list[dict[str, Any]] | None:
        try:
            status, answer = http_json("GET", f"{URLS['prometheus']}/api/v1/targets")
        except OSError:
            return None
        active = answer["data"]["activeTargets"] if status == 200 else []
        jobs = {t["labels"]["job"] for t in active if t["health"] == "up"}
        return active if jobs >= {"ingress", "order", "entitlement", "notifier"} else None

    active = wait_until(targets, "every service scraped and up", seconds=120, every=2)
    assert all(t["health"] == "up" for t in active), active


@pytest.mark.parametrize(
    ("command", "env", "named"),
    [
        # A secret file that is not there.
        ("ingress", {"AMQP_URL_FILE": "/run/secrets/nowhere"}, "AMQP_URL_FILE"),
        # A variable the service cannot start without.
        ("sandbox", {"WECHATPAY_MCHID": ""}, "WECHATPAY_MCHID"),
    ],
)
def test_a_missing_secret_or_variable_stops_the_container_naming_it(
    stack: ComposeStack, command: str, env: dict[str, str], named: str
) -> None:
    """The image itself, as compose starts it: exit status 2 at once, and the one line says
    which setting. (``docker run`` without ``--rm``: on podman's API, compose's run and
    exec and ``docker run --rm`` answer 0 whatever the exit status.)"""
    image = stack.env.get("PAYLANE_IMAGE", "paylane:local")
    name = f"{stack.project}-bad-{command}"
    args = [f"--env={name}={value}" for name, value in env.items()]
    try:
        done = subprocess.run(
            [engine_cli(), "run", f"--name={name}", "--read-only", *args, image, "serve", command],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        remove = [engine_cli(), "rm", "-f", name]
        subprocess.run(remove, env=stack.env, capture_output=True, check=False)
    assert done.returncode == 2, done
    assert named in done.stderr, done.stderr
