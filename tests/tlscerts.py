"""Throwaway TLS certificates for tests, made with the openssl command line tool.

`make_pki(directory)` writes two CAs (the broker's and a stranger's), a server certificate for
`localhost` and client certificates signed by each CA. Elliptic-curve keys: quick to make.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate signed by other_ca
    stranger_key: Path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _run(
        "req", "-x509", *_KEY, "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    cert, key, csr, extfile = d / f"{name}.pem", d / f"{name}.key", d / f"{name}.csr", d / f"{name}.ext"
    extfile.write_text(ext + "\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _run("req", *_KEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _run(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(extfile),
    )  # fmt: skip
    key.chmod(0o644)  # the node reads it as the same user; nothing else is secret here
    return cert, key


def make_pki(d: Path) -> Pki:
    """Write the certificates into `d` and return their paths."""
    ca = _ca(d, "rt-test-ca")
    other = _ca(d, "rt-stranger-ca")
    server = _leaf(d, "localhost", ca, "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth")
    client = _leaf(d, "rt-client", ca, "extendedKeyUsage=clientAuth")
    stranger = _leaf(d, "rt-stranger", other, "extendedKeyUsage=clientAuth")
    return Pki(ca[0], other[0], server[0], server[1], client[0], client[1], stranger[0], stranger[1])
