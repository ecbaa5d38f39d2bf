#!/usr/bin/env python3
"""Make the DEMO PKI (hạ tầng khóa công khai mẫu) of the sample directory: NOT for production.

Writes, next to this script (or into ``--out``):

* ``demo-ca.pem``: a demo root CA, the trust anchor (``LIENTHONG_SIGNATURE_TRUST``). Its private
  key is thrown away once the certificates below are issued, so nobody can issue more from it;
* ``demo-000.00.00.H57.pem`` and ``demo-000.00.00.H57.key.pem``: the signing certificate that
  ``deploy/directory.yaml`` registers for UBND tỉnh Thừa Thiên Huế (policy ``require``), and its
  key, for a demo document-management system to sign the province's packages with;
* ``demo-gateway.pem`` and ``demo-gateway.key.pem``: the gateway's own signing certificate and
  key (``LIENTHONG_SIGNING_CERTIFICATE``, ``LIENTHONG_SIGNING_KEY``), used to sign the edXML it
  emits.

The two private keys are committed on purpose, as labelled demo material (each file says so in
its first lines): anyone can read them, so a signature made with them proves nothing. A real
deployment gets its certificates from a real CA (for state bodies, the Ban Cơ yếu Chính phủ
CA), keeps its key out of the repository, and points the settings above at those files.

Run ``.venv/bin/python deploy/pki/make-demo-pki.py`` to issue a fresh set (valid ten years), e.g.
before the committed one expires; the test suite checks it is still valid for a year.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

PROVINCE = "000.00.00.H57"
VALID_DAYS = 3650
DEMO_NOTICE = (
    "# DEMO ONLY: a private key published in the lienthong repository (deploy/pki/).\n"
    "# Anyone can sign with it; never configure it outside the demo and the tests.\n"
)


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_ca(now: datetime) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    name = _name("Lienthong DEMO Root CA (not for production)", "Lienthong demo PKI")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=VALID_DAYS + 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(  # keyCertSign and cRLSign only
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_signer(
    common_name: str, organisation: str, ca: x509.Certificate, ca_key: rsa.RSAPrivateKey,
    now: datetime,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A document-signing certificate: digitalSignature and nonRepudiation, as the CAs issue."""
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organisation))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    body = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return DEMO_NOTICE.encode() + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Issue the demo PKI (not for production).")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="where to write the PEM files (default: next to this script)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).replace(microsecond=0)
    ca, ca_key = make_ca(now)
    province, province_key = make_signer(
        "UBND tỉnh Thừa Thiên Huế (DEMO)", "UBND tỉnh Thừa Thiên Huế", ca, ca_key, now
    )
    gateway, gateway_key = make_signer(
        "Cổng liên thông lienthong (DEMO)", "Lienthong gateway", ca, ca_key, now
    )
    files = {
        "demo-ca.pem": _cert_pem(ca),
        f"demo-{PROVINCE}.pem": _cert_pem(province),
        f"demo-{PROVINCE}.key.pem": _key_pem(province_key),
        "demo-gateway.pem": _cert_pem(gateway),
        "demo-gateway.key.pem": _key_pem(gateway_key),
    }
    for name, data in files.items():
        path = out / name
        path.write_bytes(data)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
