"""Throw-away certificates for the local secure services: a CA, a server certificate for 127.0.0.1 and
localhost, and a client certificate, made with the openssl command (no Python dependency for it).

They are for development and tests only, written into the services' state dir and never committed;
a production deployment brings the certificates of its own CA (docs/deployment.md).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from monitor.dev.kafka import _require
from monitor.exceptions import ServicesError

__all__ = ["TestPki", "ensure_pki", "make_ca"]

_DAYS = "30"
_SERVER_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth,clientAuth\n"
    "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
)
_CLIENT_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=clientAuth\n"
)


@dataclass(frozen=True)
class TestPki:
    """Where the files are: PEM, keys unencrypted (PKCS#8), readable by their owner only."""

    __test__ = False  # not a pytest test class, whatever its name

    dir: Path

    @property
    def ca(self) -> Path:
        """The CA certificate: what clients trust."""
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def server_keystore(self) -> Path:
        """Key and certificate in one file: Kafka's PEM keystore."""
        return self.dir / "server-keystore.pem"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"


def _openssl(*args: str) -> None:
    openssl = _require("openssl", "OpenSSL (apt-get install openssl)")
    done = subprocess.run([openssl, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServicesError(f"openssl {args[0]} failed: {(done.stdout + done.stderr).strip()[-500:]}")


def make_ca(directory: Path, name: str = "aimon local test CA") -> TestPki:
    """A fresh self-signed CA in `directory` (ca.pem, ca.key)."""
    pki = TestPki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", _DAYS, "-subj", f"/CN={name}",
        "-keyout", str(pki.ca_key), "-out", str(pki.ca),
    )  # fmt: skip
    return pki


def _issue(pki: TestPki, cert: Path, key: Path, name: str, extensions: str) -> None:
    with tempfile.TemporaryDirectory(dir=pki.dir) as tmp:
        csr, ext = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
        ext.write_text(extensions, encoding="utf-8")
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(key),
            "-out",
            str(csr),
        )
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(pki.ca), "-CAkey", str(pki.ca_key),
            "-CAcreateserial", "-CAserial", str(Path(tmp) / "ca.srl"), "-days", _DAYS,
            "-extfile", str(ext), "-out", str(cert),
        )  # fmt: skip


def ensure_pki(directory: Path) -> TestPki:
    """The CA, server and client certificates in `directory`, made once (kept while the files exist)."""
    pki = TestPki(directory)
    wanted = (pki.ca, pki.server_keystore, pki.client_cert, pki.client_key)
    if all(path.exists() for path in wanted):
        return pki
    make_ca(directory)
    _issue(pki, pki.server_cert, pki.server_key, "localhost", _SERVER_EXTENSIONS)
    _issue(pki, pki.client_cert, pki.client_key, "aimon-client", _CLIENT_EXTENSIONS)
    pki.server_keystore.write_bytes(pki.server_key.read_bytes() + pki.server_cert.read_bytes())
    for path in directory.iterdir():
        if path.suffix in (".key", ".pem"):
            os.chmod(path, 0o600)
    return pki
