"""``paylane sessions revoke USER_ID``: end every session of a user (a lost phone, a
sign-out everywhere) from the operator's shell, as the backend's
``POST /users/{user_id}/sessions/revoke`` does (:mod:`paylane_order.sessions`). Needs
only ``MYSQL_URL`` (the order service's database user may). Exit code 0 when revoked, 1
for an unknown user, 2 for bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from paylane_common.runtime.service import command_resources
from paylane_common.runtime.settings import BaseServiceSettings
from paylane_common.storage import db
from paylane_order.sessions import revoke

from .commands import command_settings


def _revoke(args: argparse.Namespace) -> int:
    settings = command_settings(BaseServiceSettings)

    async def main() -> int:
        async with command_resources(settings, "sessions") as opened:
            pool = await opened.pool(maxsize=1)
            async with db.transaction(pool) as cur:
                await cur.execute("SELECT 1 FROM users WHERE id = %s", (args.user_id,))
                known = await cur.fetchone() is not None
            if not known:
                print(f"paylane: user {args.user_id} does not exist", file=sys.stderr)
                return 1
            version = await revoke(pool, args.user_id)
        print(f"{args.user_id}: sessions revoked (version {version})")
        return 0

    return asyncio.run(main())


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sessions = commands.add_parser("sessions", help="users' sessions (client tokens)")
    what = sessions.add_subparsers(dest="what", required=True)
    revoke_cmd = what.add_parser(
        "revoke",
        help="refuse every token issued to the user so far; a new sign-in works at once",
    )
    revoke_cmd.add_argument("user_id", help="the users.id, e.g. user-1706345678901-xyz789")
    revoke_cmd.set_defaults(func=_revoke)
