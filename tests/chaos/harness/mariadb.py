"""Stopping, crashing and starting the local MariaDB server, and killing its client
connections: what only a local server run as root allows."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pymysql

from tests.support.infra import Infra
from tests.support.polling import eventually

MARIADBD = "/usr/sbin/mariadbd"


def mariadb_control_problem(infra: Infra) -> str | None:
    """Why this test run cannot stop and start the database server, or None."""
    if infra.kind != "local":
        return (
            f"MySQL runs in a {infra.kind} (testcontainers): restarting it from here is not "
            "supported (a restarted container gets a new mapped port)"
        )
    if infra.mysql_host not in ("127.0.0.1", "localhost"):
        return f"MySQL at {infra.mysql_host} is not on this machine"
    for tool in ("mysqladmin", "start-stop-daemon"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if not os.path.exists(MARIADBD):
        return f"{MARIADBD} not found (only a local MariaDB can be restarted)"
    if os.geteuid() != 0:
        return "starting mariadbd needs root"
    return None


def _mysqladmin(infra: Infra, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        "mysqladmin",
        "--protocol=tcp",
        f"-h{infra.mysql_host}",
        f"-P{infra.mysql_port}",
        f"-u{infra.mysql_user}",
        "--connect-timeout=2",
    ]
    env = {**os.environ, "MYSQL_PWD": infra.mysql_password}
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def _mariadbd_running() -> bool:
    done = subprocess.run(
        ["start-stop-daemon", "--status", "--exec", MARIADBD], capture_output=True, check=False
    )
    return done.returncode == 0


async def _mariadbd_gone() -> bool:
    return not await asyncio.to_thread(_mariadbd_running)


async def _answers_ping(infra: Infra) -> bool:
    return (await asyncio.to_thread(_mysqladmin, infra, "ping")).returncode == 0


async def mariadb_stop(infra: Infra) -> None:
    """A clean shutdown (``mysqladmin shutdown``), waited for until the process is gone."""
    done = await asyncio.to_thread(_mysqladmin, infra, "shutdown")
    if done.returncode != 0:
        raise RuntimeError(f"mysqladmin shutdown failed: {done.stderr.strip()}")
    await eventually(_mariadbd_gone, 60, what="mariadbd exit", interval=0.1)


async def mariadb_crash() -> None:
    """kill -9 the server (what it committed must survive: InnoDB crash recovery)."""
    await asyncio.to_thread(
        subprocess.run,
        ["start-stop-daemon", "--stop", "--oknodo", "--signal", "KILL", "--exec", MARIADBD],
        check=True,
        capture_output=True,
        timeout=30,
    )
    await eventually(_mariadbd_gone, 60, what="mariadbd gone", interval=0.1)


async def mariadb_start(infra: Infra) -> None:
    """Start the server if it is not running, and wait until it answers (bounded)."""
    if await _answers_ping(infra):
        return
    if not await asyncio.to_thread(_mariadbd_running):
        await asyncio.to_thread(
            subprocess.run,
            ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", MARIADBD],
            check=True,
            timeout=30,
        )
    await eventually(lambda: _answers_ping(infra), 90, what="MariaDB ping", interval=0.1)


def kill_connections(infra: Infra, database: str) -> int:
    """KILL every client connection on ``database`` (the services', the test pool's idle
    ones), except the one doing the killing. Returns how many."""
    killed = 0
    with infra.mysql_admin() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
            (database,),
        )
        for (thread_id,) in cur.fetchall():
            try:
                cur.execute(f"KILL {int(thread_id)}")
                killed += 1
            except pymysql.err.OperationalError:  # gone meanwhile
                pass
    return killed
