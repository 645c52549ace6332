"""Certificates made here with openssl for the tests: a CA and a TLS server certificate for
127.0.0.1 (Redis over TLS), and a CA with a C2PA signer it certifies (content credentials)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_certificates(folder: Path) -> str:
    """A CA and a server certificate for 127.0.0.1 (openssl); returns the CA file."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=stylebatch-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )
    return str(folder / "ca.crt")


def make_signing_certificate(folder: Path) -> tuple[Path, Path]:
    """A test CA and an ES256 signer it certifies (C2PA refuses a self-signed signer):
    the same commands as docs/campaigns.md. Returns (chain PEM, PKCS#8 key)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    openssl("req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "2",
            "-subj", "/CN=stylebatch test CA/O=stylebatch",
            "-addext", "basicConstraints=critical,CA:true",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.crt")  # fmt: skip
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "signer.ec")
    openssl("pkcs8", "-topk8", "-nocrypt", "-in", "signer.ec", "-out", "signer.key")
    openssl("req", "-new", "-key", "signer.key", "-subj", "/CN=stylebatch test signer",
            "-out", "signer.csr")  # fmt: skip
    (folder / "ext.cnf").write_text(
        "basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=emailProtection\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    openssl("x509", "-req", "-in", "signer.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-sha256", "-extfile", "ext.cnf",
            "-out", "signer.crt")  # fmt: skip
    chain = folder / "chain.pem"
    chain.write_bytes((folder / "signer.crt").read_bytes() + (folder / "ca.crt").read_bytes())
    return chain, folder / "signer.key"
