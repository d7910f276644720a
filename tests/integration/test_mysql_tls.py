"""TLS to MySQL (``MYSQL_URL``'s ``ssl-mode`` / ``ssl-ca``, docs/deployment.md) against a
MariaDB of the test's own that accepts only TLS (tests/support/tls_mariadb.py): the pool,
the probe, ``paylane migrate`` and a service connect with VERIFY_CA and VERIFY_IDENTITY;
a URL without ``ssl-mode``, a wrong CA, a certificate for another host and a missing CA
file are configuration errors naming ``MYSQL_URL`` (exit 2), never waited out as a
database that is not up yet."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pymysql
import pytest

from paylane_common.runtime.exceptions import ConfigError
from paylane_common.storage import db
from tests.support.stack import Stack
from tests.support.tls_mariadb import TlsMariaDB, tls_mariadb

pytestmark = pytest.mark.integration

DATABASE = "paylane_tls"


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TlsMariaDB]:
    async with tls_mariadb(tmp_path_factory.mktemp("tls-mariadb")) as server:
        yield server


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = Stack({}, tmp_path)
    yield stack
    await stack.stop_all()


async def _cipher(url: str) -> str:
    """The cipher of a pooled connection (empty: not encrypted)."""
    async with db.create_pool(url, maxsize=1) as pool, db.transaction(pool) as cur:
        await cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        row = await cur.fetchone()
    return str(row["Value"])


async def _paylane(command: str, mysql_url: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "paylane.cli", command],
        env={**os.environ, "MYSQL_URL": mysql_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _exit_of(stack: Stack, mysql_url: str, amqp_url: str) -> tuple[int, str]:
    """A service started with ``mysql_url``: its exit code and log, once it exited."""
    service = await stack.start(
        "entitlement", {"MYSQL_URL": mysql_url, "AMQP_URL": amqp_url}, ready=False
    )
    # Generous: a configuration error ends the start-up at the first attempt.
    code = await asyncio.wait_for(service.process.wait(), 60)
    stack.services.pop(service.name)
    return code, service.log_path.read_text()


# --- connecting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "host"),
    [
        ("ssl-mode=REQUIRED", "127.0.0.1"),
        ("ssl-mode=VERIFY_CA&ssl-ca={ca}", "127.0.0.1"),
        ("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}", "localhost"),
        ("ssl_mode=verify_ca&ssl_ca={ca}", "127.0.0.1"),  # the option files' spelling
    ],
    ids=["required", "verify_ca", "verify_identity", "underscores"],
)
async def test_the_pool_and_the_probe_connect_encrypted(
    server: TlsMariaDB, query: str, host: str
) -> None:
    url = server.url("mysql", query.format(ca=server.ca), host=host)
    assert await _cipher(url) != ""
    await db.probe(url, timeout=10)


async def test_paylane_migrate_and_a_service_run_over_verified_tls(
    server: TlsMariaDB, stack: Stack, amqp_url: str
) -> None:
    migrated = await _paylane(
        "migrate", server.url(DATABASE, f"ssl-mode=VERIFY_CA&ssl-ca={server.ca}")
    )
    assert migrated.returncode == 0, migrated.stderr
    assert f"migrated {DATABASE}" in migrated.stdout

    url = server.url(DATABASE, f"ssl-mode=VERIFY_IDENTITY&ssl-ca={server.ca}", host="localhost")
    await stack.start("entitlement", {"MYSQL_URL": url, "AMQP_URL": amqp_url})  # ready
    async with db.create_pool(url, maxsize=1) as pool, db.transaction(pool) as cur:
        await cur.execute("SELECT COUNT(*) AS n FROM entitlement_grants")
        assert (await cur.fetchone())["n"] == 0


# --- refused -----------------------------------------------------------------------------------


async def test_without_ssl_mode_the_server_refuses_and_says_what_to_add(
    server: TlsMariaDB, stack: Stack, amqp_url: str
) -> None:
    url = server.url("mysql")
    with pytest.raises(ConfigError) as refused:
        await db.probe(url, timeout=10)
    message = str(refused.value)
    assert message.startswith("MYSQL_URL: ")
    assert "require_secure_transport" in message and "ssl-mode=VERIFY_CA&ssl-ca=PATH" in message
    assert "tls-test-password" not in message

    code, log = await _exit_of(stack, url, amqp_url)
    assert code == 2, log
    assert "paylane: MYSQL_URL: the database server accepts only TLS connections" in log
    assert "waiting_for_dependency" not in log
    migrated = await _paylane("migrate", server.url(DATABASE))
    assert migrated.returncode == 2
    assert migrated.stderr.startswith("paylane: MYSQL_URL: the database server accepts only TLS")


async def test_a_wrong_password_stays_what_it_was(server: TlsMariaDB) -> None:
    """Denied over TLS too: not taken for "TLS only" (a service waits, as for a user the
    database's init script has not created yet)."""
    url = server.url("mysql").replace(":tls-test-password@", ":wrong@")
    with pytest.raises(pymysql.err.OperationalError) as denied:
        await db.probe(url, timeout=10)
    assert denied.value.args[0] == 1045


@pytest.mark.parametrize(
    ("query", "host"),
    [
        ("ssl-mode=VERIFY_CA&ssl-ca={other}", "127.0.0.1"),
        ("ssl-mode=VERIFY_IDENTITY&ssl-ca={other}", "localhost"),
        # The right CA, but the certificate names localhost, not 127.0.0.1.
        ("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}", "127.0.0.1"),
    ],
    ids=["wrong_ca", "wrong_ca_identity", "another_host"],
)
async def test_a_certificate_that_does_not_verify_is_a_configuration_error(
    server: TlsMariaDB, query: str, host: str
) -> None:
    url = server.url("mysql", query.format(ca=server.ca, other=server.other_ca), host=host)
    for attempt in (db.probe(url, timeout=10), _cipher(url)):
        with pytest.raises(ConfigError, match=r"^MYSQL_URL: the database server's certificate"):
            await attempt


async def test_a_wrong_ca_stops_a_service_and_paylane_migrate_with_exit_2(
    server: TlsMariaDB, stack: Stack, amqp_url: str
) -> None:
    url = server.url(DATABASE, f"ssl-mode=VERIFY_CA&ssl-ca={server.other_ca}")
    code, log = await _exit_of(stack, url, amqp_url)
    assert code == 2, log
    assert "paylane: MYSQL_URL: the database server's certificate does not verify" in log
    assert f"ssl-ca={server.other_ca}" in log
    assert "waiting_for_dependency" not in log  # not taken for a database not up yet

    migrated = await _paylane("migrate", url)
    assert migrated.returncode == 2
    assert migrated.stderr.startswith("paylane: MYSQL_URL: the database server's certificate")
    assert "Traceback" not in migrated.stderr


async def test_a_missing_ca_file_is_an_invalid_setting(
    server: TlsMariaDB, stack: Stack, amqp_url: str, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.pem"
    url = server.url(DATABASE, f"ssl-mode=VERIFY_CA&ssl-ca={missing}")
    code, log = await _exit_of(stack, url, amqp_url)
    assert code == 2, log
    assert f"MYSQL_URL ssl-ca '{missing}' does not exist" in log
    migrated = await _paylane("migrate", url)
    assert migrated.returncode == 2
    assert f"MYSQL_URL ssl-ca '{missing}' does not exist" in migrated.stderr


# --- a server without TLS ----------------------------------------------------------------------


async def test_required_refuses_a_server_offering_no_tls_and_preferred_goes_plain(
    mysql_url: str,
) -> None:
    """The shared server, which has no TLS configured (skipped where it has)."""
    with pymysql.connect(**_plain(mysql_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@have_ssl")
        (have_ssl,) = cur.fetchone()
    if have_ssl == "YES":
        pytest.skip("the shared MariaDB offers TLS")
    with pytest.raises(ConfigError, match=r"^MYSQL_URL asks for ssl-mode=REQUIRED, but the"):
        await db.probe(mysql_url + "?ssl-mode=REQUIRED", timeout=10)
    with pytest.raises(ConfigError, match="offers no TLS"):
        await _cipher(mysql_url + "?ssl-mode=REQUIRED")
    assert await _cipher(mysql_url + "?ssl-mode=PREFERRED") == ""


def _plain(url: str) -> dict[str, object]:
    from paylane_common.runtime.settings import MySQLParams

    params = MySQLParams.from_url(url)
    return {
        "host": params.host,
        "port": params.port,
        "user": params.user,
        "password": params.password,
        "ssl_disabled": True,
    }
