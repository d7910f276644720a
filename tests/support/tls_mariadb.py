"""A MariaDB server of the test's own that accepts only TLS (``require_secure_transport``),
with certificates made here: a CA, the server's certificate it signed (for ``localhost``
only, not ``127.0.0.1``: VERIFY_IDENTITY tells them apart), and another CA that signed
nothing of the server's. Started in a temporary directory on a free port, stopped at the
end: the shared server on 3306 is never touched."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymysql
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.ci import require_tool
from tests.support.polling import eventually
from tests.support.stack import free_port

MARIADBD = "/usr/sbin/mariadbd"
USER = "paylane_tls"
PASSWORD = "tls-test-password"


@dataclass(frozen=True)
class TlsMariaDB:
    port: int
    #: The CA that signed the server's certificate, and one that did not.
    ca: Path
    other_ca: Path

    def url(self, database: str, query: str = "", *, host: str = "127.0.0.1") -> str:
        return f"mysql://{USER}:{PASSWORD}@{host}:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(directory: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def make_certificates(directory: Path) -> None:
    """``ca.pem``, ``server.pem`` / ``server-key.pem`` (signed by ``ca``, for
    ``localhost``), ``other-ca.pem``."""
    ca_key, ca_cert = _ca(directory, "ca")
    _ca(directory, "other-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


@contextlib.asynccontextmanager
async def tls_mariadb(directory: Path) -> AsyncIterator[TlsMariaDB]:
    """The server, up and accepting :data:`USER` over TLS; stopped and gone on leaving."""
    require_tool(shutil.which(MARIADBD) or shutil.which("mariadbd"), "mariadbd is not installed")
    install = require_tool(shutil.which("mariadb-install-db"), "mariadb-install-db is missing")
    certs, data = directory / "certs", directory / "data"
    certs.mkdir()
    make_certificates(certs)
    socket = directory / "mysqld.sock"
    await asyncio.to_thread(
        subprocess.run,
        [
            install,
            "--no-defaults",
            f"--datadir={data}",
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    port = free_port()
    log = (directory / "mariadbd.log").open("wb")
    server = await asyncio.create_subprocess_exec(
        shutil.which("mariadbd") or MARIADBD,
        "--no-defaults",
        "--user=root",
        f"--datadir={data}",
        f"--socket={socket}",
        f"--pid-file={directory / 'mariadbd.pid'}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        "--skip-name-resolve",
        f"--ssl-ca={certs / 'ca.pem'}",
        f"--ssl-cert={certs / 'server.pem'}",
        f"--ssl-key={certs / 'server-key.pem'}",
        "--require-secure-transport=ON",
        "--innodb-buffer-pool-size=32M",
        "--innodb-log-file-size=16M",
        "--performance-schema=OFF",
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def admin() -> pymysql.Connection:
        # Over the socket, which require_secure_transport accepts as secure.
        return pymysql.connect(unix_socket=str(socket), user="root", autocommit=True)

    def up() -> bool:
        """The socket is there: mariadbd creates it once it accepts connections (a
        pymysql connect tried before leaks its socket)."""
        if server.returncode is not None:
            raise RuntimeError(f"mariadbd exited: {(directory / 'mariadbd.log').read_text()}")
        return socket.exists()

    try:
        await eventually(up, 60, what="the TLS-only mariadbd", interval=0.2)
        conn = admin()
        with conn.cursor() as cur:
            cur.execute(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
            cur.execute(f"GRANT ALL ON *.* TO '{USER}'@'%'")
        conn.close()
        yield TlsMariaDB(port, certs / "ca.pem", certs / "other-ca.pem")
    finally:
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 30)
            except TimeoutError:
                server.kill()
                await server.wait()
        log.close()
