"""Create the secret files of the docker-compose stack (``make up`` runs this first).

    uv run python deploy/compose_secrets.py [--dir deploy/secrets]

Existing files are kept, so real credentials put there survive (see
deploy/secrets/README.md). Missing ones are made up: random passwords, a random APIv3
key and internal secrets, throw-away RSA keys for the merchant and for the sandbox's
"WeChat Pay" side, an Ed25519 key the order service signs client tokens with
(``client_token_private_key``; its public half, ``client_token_public_key``, is all the
notifier gets).

Rebuilt on every run from those: ``rabbitmq_definitions`` (deploy/rabbitmq/definitions.json
plus the broker users: the administrator ``paylane`` and one user per service with the
permissions of deploy/rabbitmq/permissions.json; a node that imports definitions at boot
creates no default user, see rabbitmq.conf), and the URL files the services read through
``AMQP_URL_FILE`` / ``MYSQL_URL_FILE``: ``amqp_url_<service>``, ``amqp_url_admin``,
``mysql_url_<service>`` (each service's own database user, deploy/mysql/grants.sql) and
``mysql_migrate_url`` (the migrator).
The database in those URLs is the bundled one (``mysql:3306/paylane``) unless
PAYLANE_MYSQL_HOST, PAYLANE_MYSQL_PORT or PAYLANE_MYSQL_DATABASE say otherwise, from the
environment or from deploy/.env (the file compose reads): your own MySQL, with
deploy/compose.external-mysql.yml (docs/deployment.md).
Only file names are printed, never values.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dotenv import dotenv_values

DEPLOY = Path(__file__).resolve().parent
#: The broker's administrator (management UI, ops commands, ``paylane topology``).
BROKER_USER = "paylane"
#: Each service's own broker user is ``paylane-<service>`` (deploy/rabbitmq/permissions.json).
BROKER_SERVICES = ("ingress", "order", "entitlement", "notifier")
#: Each of these has its own database user ``paylane_<service>`` (made and granted by
#: deploy/mysql/apply-grants.sh); the migrator's is made by deploy/mysql/init-users.sh.
MYSQL_SERVICES = ("order", "entitlement", "notifier")
MYSQL_MIGRATE_USER = "paylane_migrate"


def _hex() -> str:
    # Hex only: these go into the AMQP / MySQL URLs unencoded.
    return secrets.token_hex(24)


def _apiv3_key() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def _rsa_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode()


def _ed25519_private_key() -> str:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode()


def _public_half(private: Path) -> str:
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


#: Secret file name -> how to make it when missing.
GENERATED: dict[str, Callable[[], str]] = {
    "mysql_root_password": _hex,
    **{f"mysql_{service}_password": _hex for service in MYSQL_SERVICES},
    "mysql_migrate_password": _hex,
    "rabbitmq_password": _hex,
    "grafana_admin_password": _hex,
    **{f"rabbitmq_{service}_password": _hex for service in BROKER_SERVICES},
    "wechatpay_apiv3_key": _apiv3_key,
    "internal_api_secret": lambda: secrets.token_urlsafe(32),
    "backend_api_secret": lambda: secrets.token_urlsafe(32),
    # The mini-program's AppSecret: replace with the real one for a real mini-program.
    "wechat_app_secret": lambda: secrets.token_hex(16),
    # Signs client tokens: the order service's alone (the notifier gets the public half).
    "client_token_private_key": _ed25519_private_key,
    "wechatpay_merchant_private_key": _rsa_private_key,
    # WeChat Pay's signing key, held by the sandbox only; its public half is below.
    "sandbox_platform_private_key": _rsa_private_key,
    # Alerting (profile "monitoring"): the WeCom group robot's webhook URL and the mail
    # server's password. Placeholders until replaced: WeCom refuses the key (the relay
    # logs wecom_robot_refused), the mail server the password.
    "wecom_robot_url": lambda: "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=REPLACE-ME",
    "smtp_password": lambda: "REPLACE-ME",
}
#: Derived from other files rather than random.
DERIVED = (
    "wechatpay_public_key",
    "client_token_public_key",
    "rabbitmq_definitions",
    "amqp_url_admin",
    *(f"amqp_url_{service}" for service in BROKER_SERVICES),
    *(f"mysql_url_{service}" for service in MYSQL_SERVICES),
    "mysql_migrate_url",
)


def rabbitmq_password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def broker_definitions(
    topology: dict[str, object], passwords: dict[str, str], permissions: dict[str, Any]
) -> dict[str, object]:
    """The committed topology, the administrator (full rights on "/") and each service's
    user with the committed permissions; ``passwords`` maps user name to password."""
    merged = dict(topology)
    merged["users"] = [
        {
            "name": user,
            "password_hash": rabbitmq_password_hash(password),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            # Local stack: the administrator also opens the management UI on 127.0.0.1:15672.
            "tags": ["administrator"] if user == BROKER_USER else [],
        }
        for user, password in passwords.items()
    ]
    merged["permissions"] = [
        {"user": BROKER_USER, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
        *permissions["permissions"],
    ]
    merged["topic_permissions"] = list(permissions["topic_permissions"])
    return merged


def _write(path: Path, content: str) -> None:
    # 0644: compose bind-mounts each file into containers running as other uids
    # (rabbitmq 999, paylane 10001); the 0700 directory keeps other host users out.
    path.write_text(content, encoding="utf-8")
    path.chmod(0o644)


@dataclass(frozen=True)
class Database:
    """Where the services' MySQL URLs point."""

    host: str = "mysql"
    port: int = 3306
    name: str = "paylane"

    @classmethod
    def configured(cls, env_file: Path) -> Database:
        """From PAYLANE_MYSQL_HOST / _PORT / _DATABASE: the environment first, then
        ``env_file`` (KEY=VALUE lines, as compose reads deploy/.env)."""
        # python-dotenv reads it as compose does: quotes, "export", trailing # comments.
        values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        values |= {k: v for k, v in os.environ.items() if k.startswith("PAYLANE_MYSQL_")}
        return cls(
            host=values.get("PAYLANE_MYSQL_HOST") or cls.host,
            port=int(values.get("PAYLANE_MYSQL_PORT") or cls.port),
            name=values.get("PAYLANE_MYSQL_DATABASE") or cls.name,
        )

    def url(self, user: str, password: str) -> str:
        return f"mysql://{user}:{password}@{self.host}:{self.port}/{self.name}"


def ensure_secrets(
    directory: Path, definitions: Path, database: Database | None = None
) -> dict[str, str]:
    """Create what is missing in ``directory``; return {file name: "created" | "kept" | …}."""
    database = database or Database()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    report: dict[str, str] = {}
    for name, make in GENERATED.items():
        path = directory / name
        if path.exists():
            report[name] = "kept"
        else:
            _write(path, make())
            report[name] = "created"

    halves = {
        "wechatpay_public_key": "sandbox_platform_private_key",
        "client_token_public_key": "client_token_private_key",
    }
    for name, private in halves.items():
        public = directory / name
        if public.exists():
            report[public.name] = "kept"
        else:
            _write(public, _public_half(directory / private))
            report[public.name] = "created"

    def read(name: str) -> str:
        return (directory / name).read_text(encoding="utf-8").strip()

    passwords = {BROKER_USER: read("rabbitmq_password")}
    passwords |= {f"paylane-{s}": read(f"rabbitmq_{s}_password") for s in BROKER_SERVICES}
    topology = json.loads(definitions.read_text(encoding="utf-8"))
    permissions = json.loads(definitions.with_name("permissions.json").read_text("utf-8"))
    merged = broker_definitions(topology, passwords, permissions)
    _write(directory / "rabbitmq_definitions", json.dumps(merged, indent=2) + "\n")
    report["rabbitmq_definitions"] = f"rebuilt from {definitions.name} and permissions.json"

    urls = {
        "amqp_url_admin": f"amqp://{BROKER_USER}:{passwords[BROKER_USER]}@rabbitmq:5672/",
        **{
            f"amqp_url_{s}": f"amqp://paylane-{s}:{passwords[f'paylane-{s}']}@rabbitmq:5672/"
            for s in BROKER_SERVICES
        },
        **{
            f"mysql_url_{s}": database.url(f"paylane_{s}", read(f"mysql_{s}_password"))
            for s in MYSQL_SERVICES
        },
        "mysql_migrate_url": database.url(MYSQL_MIGRATE_USER, read("mysql_migrate_password")),
    }
    for name, url in urls.items():
        _write(directory / name, url + "\n")
        report[name] = "rebuilt"
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DEPLOY / "secrets")
    parser.add_argument(
        "--definitions", type=Path, default=DEPLOY / "rabbitmq" / "definitions.json"
    )
    args = parser.parse_args(argv)
    # The env file compose reads: COMPOSE_ENV_FILES when set, else deploy/.env.
    env_file = Path(os.environ.get("COMPOSE_ENV_FILES", "").split(",")[0] or DEPLOY / ".env")
    database = Database.configured(env_file)
    for name, what in ensure_secrets(args.dir, args.definitions, database).items():
        print(f"{args.dir / name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
