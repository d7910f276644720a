"""Create the secret files of the docker-compose stack (``make up`` runs this first).

    uv run python deploy/compose_secrets.py [--dir deploy/secrets]

Existing files are kept, so real credentials put there survive (see
deploy/secrets/README.md). Missing ones are made up: random passwords, a random APIv3
key and internal/client-token secrets, throw-away RSA keys for the merchant and for the
sandbox's "WeChat Pay" side. ``rabbitmq_definitions`` is rebuilt on every run from
deploy/rabbitmq/definitions.json plus the compose-only ``paylane`` broker user, because
a node that imports definitions at boot creates no default user (see rabbitmq.conf).
Only file names are printed, never values.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import string
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEPLOY = Path(__file__).resolve().parent
BROKER_USER = "paylane"


def _hex() -> str:
    # Hex only: the compose entrypoint puts these into AMQP_URL / MYSQL_URL unencoded.
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


#: Secret file name -> how to make it when missing.
GENERATED: dict[str, Callable[[], str]] = {
    "mysql_root_password": _hex,
    "mysql_password": _hex,
    "rabbitmq_password": _hex,
    "wechatpay_apiv3_key": _apiv3_key,
    "internal_api_secret": lambda: secrets.token_urlsafe(32),
    "client_token_secret": lambda: secrets.token_urlsafe(48),
    "wechatpay_merchant_private_key": _rsa_private_key,
    # WeChat Pay's signing key, held by the sandbox only; its public half is below.
    "sandbox_platform_private_key": _rsa_private_key,
}
#: Derived from other files rather than random.
DERIVED = ("wechatpay_public_key", "rabbitmq_definitions")


def rabbitmq_password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def broker_definitions(topology: dict[str, object], password: str) -> dict[str, object]:
    """The committed topology plus one user with full rights on the "/" vhost (local only)."""
    merged = dict(topology)
    merged["users"] = [
        {
            "name": BROKER_USER,
            "password_hash": rabbitmq_password_hash(password),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            # Local stack: the same user opens the management UI on 127.0.0.1:15672.
            "tags": ["administrator"],
        }
    ]
    merged["permissions"] = [
        {"user": BROKER_USER, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
    ]
    return merged


def _write(path: Path, content: str) -> None:
    # 0644: compose bind-mounts each file into containers running as other uids
    # (rabbitmq 999, paylane 10001); the 0700 directory keeps other host users out.
    path.write_text(content, encoding="utf-8")
    path.chmod(0o644)


def ensure_secrets(directory: Path, definitions: Path) -> dict[str, str]:
    """Create what is missing in ``directory``; return {file name: "created" | "kept" | …}."""
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

    public = directory / "wechatpay_public_key"
    if public.exists():
        report[public.name] = "kept"
    else:
        private_pem = (directory / "sandbox_platform_private_key").read_bytes()
        key = serialization.load_pem_private_key(private_pem, password=None)
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write(public, pem.decode())
        report[public.name] = "created"

    topology = json.loads(definitions.read_text(encoding="utf-8"))
    password = (directory / "rabbitmq_password").read_text(encoding="utf-8").strip()
    merged = broker_definitions(topology, password)
    _write(directory / "rabbitmq_definitions", json.dumps(merged, indent=2) + "\n")
    report["rabbitmq_definitions"] = f"rebuilt from {definitions.name}"
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DEPLOY / "secrets")
    parser.add_argument(
        "--definitions", type=Path, default=DEPLOY / "rabbitmq" / "definitions.json"
    )
    args = parser.parse_args(argv)
    for name, what in ensure_secrets(args.dir, args.definitions).items():
        print(f"{args.dir / name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
