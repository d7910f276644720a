"""The adopting team's own MySQL (issue: containers): compose without its MySQL service.

The team keeps the database its cloud function and Node backend already use (a CynosDB
endpoint). With deploy/compose.external-mysql.yml the bundled mysql never starts; the
migrator, the migrations and the services' grants are made on that server by the
administrator account the team gives, and the services' URLs point there. Here this
machine's MariaDB plays that server: the containers reach it over the network through
the engine's host address, as a remote endpoint, in a database of the test's own.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator

import pymysql
import pytest

from tests.support.compose_stack import ComposeStack, Forwarder, pay_one_order, wait_until
from tests.support.infra import local_mysql

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

ADMIN = "paylane_ci_admin"
#: The users the stack makes on the server it is given (deploy/mysql/*).
MADE = ("paylane_migrate", "paylane_order", "paylane_entitlement", "paylane_notifier")


def host_address(stack: ComposeStack) -> str:
    """How containers reach this machine: podman's name for it, or Docker's (with the
    host-gateway entry the test adds, as Docker on Linux has none by default)."""
    if "PAYLANE_TEST_HOST_ADDRESS" in os.environ:
        return os.environ["PAYLANE_TEST_HOST_ADDRESS"]
    return "host.containers.internal" if stack.on_podman() else "host.docker.internal"


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ComposeStack, str]]:
    """This machine's MariaDB (never a testcontainers one: that would be a container
    beside the stack, not a server outside it), as the team's own server."""
    server = local_mysql()
    database = f"paylane_ext_{uuid.uuid4().hex[:8]}"
    password = secrets.token_hex(16)
    admin = pymysql.connect(**server, autocommit=True)
    with admin.cursor() as cur:
        # What a team's administrator account needs here, no more: make and grant users,
        # and everything on paylane's database.
        cur.execute(f"DROP USER IF EXISTS '{ADMIN}'@'%'")
        cur.execute(f"CREATE USER '{ADMIN}'@'%%' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT CREATE USER ON *.* TO '{ADMIN}'@'%'")
        cur.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{ADMIN}'@'%' WITH GRANT OPTION")
    tmp = tmp_path_factory.mktemp("external")
    stack = ComposeStack.create(tmp, COMPOSE_FILE="docker-compose.yml:compose.external-mysql.yml")
    forwarder = Forwarder((server["host"], server["port"]), stack.env)
    stack.env.update(
        PAYLANE_MYSQL_HOST=host_address(stack),
        PAYLANE_MYSQL_PORT=str(forwarder.port),
        PAYLANE_MYSQL_DATABASE=database,
        PAYLANE_MYSQL_ADMIN_USER=ADMIN,
    )
    if not stack.on_podman():
        stack.add_host_gateway(tmp, host_address(stack))
    (stack.secrets / "mysql_admin_password").write_text(password + "\n")
    try:
        stack.make("up")
        yield stack, database
    finally:
        try:
            stack.make("down")
        finally:
            stack.down("--volumes", "--remove-orphans")
            forwarder.close()
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
                for user in (ADMIN, *MADE):
                    cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
            admin.close()


def test_the_stack_runs_without_its_mysql(external: tuple[ComposeStack, str]) -> None:
    stack, _ = external
    states = stack.states()
    assert "mysql" not in states
    for one_shot in ("dbusers", "migrate", "grants"):
        assert (states[one_shot]["State"], states[one_shot]["ExitCode"]) == ("exited", 0)
    services = ("ingress", "order", "entitlement", "notifier", "sandbox")

    def all_healthy() -> bool:
        now = stack.states()
        return all(now[name]["Health"] == "healthy" for name in services)

    # Polled, not read once: CI saw ingress reported unhealthy once on podman right after
    # `up --wait` had found it healthy (podman's health state is driven by a loop there,
    # deploy/podman/healthchecks.sh); it must be healthy within a minute.
    wait_until(all_healthy, "every service healthy", seconds=60, every=2)
    urls = {p.name: p.read_text() for p in stack.secrets.glob("mysql_url_*")}
    assert urls and all(f"@{host_address(stack)}:" in url for url in urls.values()), urls


async def test_a_payment_lands_in_the_teams_database(external: tuple[ComposeStack, str]) -> None:
    _, database = external
    payment = await pay_one_order()
    connection = pymysql.connect(**local_mysql(), database=database)
    with connection, connection.cursor() as cur:
        cur.execute(
            "SELECT o.status, u.payment_status FROM payment_orders o"
            " JOIN users u ON u.id = o.user_id WHERE o.out_trade_no = %s",
            (payment["no"],),
        )
        assert cur.fetchall() == (("paid", "premium"),)
        # Each service as its own user, with the grants of grants.sql: nothing more.
        cur.execute("SHOW GRANTS FOR 'paylane_notifier'@'%'")
        grants = [row[0] for row in cur.fetchall()]
    # The notifier reads, and writes only its record of pushes (for the console).
    writes = [g for g in grants if "INSERT" in g or "UPDATE" in g or "DELETE" in g]
    assert len(writes) == 1 and writes[0].startswith("GRANT INSERT ON "), grants
    assert "`notifier_pushes`" in writes[0], grants
