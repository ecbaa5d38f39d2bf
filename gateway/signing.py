"""Digital signatures (chữ ký số) in the running gateway: configuration, the ingress check and
the signing of what the gateway emits. The cryptography itself is :mod:`gateway.signatures`
(pure); this module reads files once at start-up and wires that into the app.

Configuration (:func:`load_signature_settings`, at start-up, in ``build_app``)
-------------------------------------------------------------------------------
* trust: the CA certificates in ``LIENTHONG_SIGNATURE_TRUST`` (PEM files, ``os.pathsep``-separated);
* registered signers: each agency's ``signature.certificates`` in the directory (PEM files,
  relative to the directory file's folder), the certificates whose signatures count as that
  agency's;
* policies: each agency's ``signature.policy``, else ``LIENTHONG_SIGNATURE_POLICY``.

A file that is missing or not PEM stops start-up with a :class:`~gateway.errors.ConfigError`
naming the agency (or setting) and the file. Signatures are *off* (``None``: nothing is checked
or recorded) only when none of this is configured: no trust file, no agency with a
``signature:`` block and the default policy left at ``verify_if_present``. Checking anyway, with
an empty trust store, would make every signature ``untrusted_chain`` and so refuse every signed
package of every agency under the default policy, on a gateway nobody set up for signatures;
skipping is the honest answer to "nothing was configured", and the absence of a
``signature_checked`` event says so in each message's record. As soon as anything is
configured, an empty trust store is taken at its word (and logged at start-up).

Ingress (:func:`edxml_check`, the ``check`` hook of :func:`gateway.ingress.admit`)
-------------------------------------------------------------------------------
The raw package is verified with the sender's policy at the current time. Refused: a 422
:class:`SignatureRefused` whose problem document carries ``signature.reason`` (``tampered``,
``unknown_signer``, ``expired_certificate``, ``no_signature``...) and points at the Signature
element; nothing is stored. Accepted: the outcome goes into the message's record twice, in the
same transaction as the message: as a ``header.trace`` entry of the stored envelope (event
``edxml.signature``, the outcome as JSON) and as the audit event ``signature_checked`` (shown by
``GET /api/v1/messages/{id}/trace``). ``admit`` runs the check after its replay checks, so a
package sent again gets its first answer, not a second verdict.

Verification runs in the event loop. Measured on this machine: 2 ms for a 2 KB package, 6.5 ms
for the 366 KB vendor sample, 12 ms at 1.9 MB (just under the 2 MiB body limit), where decoding
the same bytes, already done in the loop by ``admit``, takes 15 ms. A thread for the
verification alone would leave the larger half of the stall in place; if large packages ever
need it, ``admit`` should move decode and check to a thread together.

Egress (:class:`GatewaySigner`, ``LIENTHONG_SIGNING_KEY`` + ``LIENTHONG_SIGNING_CERTIFICATE``)
-------------------------------------------------------------------------------
The edXML the gateway writes (pushes to ``format: edxml`` agencies, ``GET
/api/v1/edxml/messages/{id}``) is signed with the gateway's own key, in the form
:func:`gateway.signatures.sign_package` writes (a test holds the two byte-identical). The key is
parsed once, at start-up: parsing an RSA key checks it, which ``sign_package`` would repeat for
every message (measured with the 2048-bit demo key: 0.8 ms to sign a 1.5 KB package here, 32 ms
through ``sign_package``; 4.5 ms against 45 ms at 366 KB). A key that is not the
certificate's, an encrypted key (there is no password setting: protect the file instead) or a
certificate outside its validity period stops start-up.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.api.keys import SIGNATURES
from gateway.codecs.xmlsafe import DEFAULT_LIMITS, XmlLimits
from gateway.directory import Directory
from gateway.envelope import AnyEnvelope, Header, TraceEntry
from gateway.errors import ConfigError, GatewayError, UnprocessableRequest
from gateway.ingress import AuditNote, Check
from gateway.settings import Settings
from gateway.signatures import (
    AUDIT_EVENT,
    SignatureOutcome,
    SignaturePolicy,
    SignatureSettings,
    TrustStore,
    check_registered,
    sign_with,
)

__all__ = [
    "SIGNER",
    "GatewaySigner",
    "SignatureRefused",
    "check_signature",
    "edxml_check",
    "load_signature_settings",
    "load_signer",
    "sign_outgoing",
    "trace_entry",
]

log = structlog.get_logger(__name__)

_TRACE_DETAIL_MAX = 4000  # TraceEntry.detail (LongText)
_TRACE_MAX: int = next(  # Header.trace's max_length
    m.max_length for m in Header.model_fields["trace"].metadata if hasattr(m, "max_length")
)
_SHORT = 200  # the outcome's free texts, cut to this when its JSON would not fit a trace entry
_EXPIRY_WARNING = timedelta(days=30)


# -- refusals -----------------------------------------------------------------------------------
class SignatureRefused(UnprocessableRequest):
    """The sender's signature policy refuses the package (422). The problem document adds
    ``signature: {reason, policy, present}`` so that a system can act on the reason without
    parsing ``detail``."""

    title = "Signature refused"
    type_slug = "signature-refused"

    def __init__(self, outcome: SignatureOutcome) -> None:
        error = outcome.rejection()
        if error is None:
            raise ValueError("the outcome was accepted: nothing to refuse")
        super().__init__(error.detail, errors=error.errors)
        self.outcome = outcome

    def problem(self) -> dict[str, Any]:
        body = super().problem()
        body["signature"] = {
            "reason": self.outcome.reason.value,
            "policy": self.outcome.policy.value,
            "present": self.outcome.present,
        }
        return body


# -- configuration ------------------------------------------------------------------------------
def _trust(settings: Settings) -> TrustStore:
    paths = [p.strip() for p in settings.signature_trust.split(os.pathsep) if p.strip()]
    try:
        return TrustStore.from_paths(*paths)
    except ConfigError as exc:
        raise ConfigError(f"LIENTHONG_SIGNATURE_TRUST: {exc.detail}") from None


def _registered(directory: Directory, directory_dir: Path, now: datetime
                ) -> dict[str, list[bytes]]:
    registered: dict[str, list[bytes]] = {}
    for agency in directory.agencies.values():
        for name in agency.certificates:
            path = directory_dir / name
            where = f"directory: agency {agency.code}: signature certificate {path}"
            try:
                pem = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read it ({exc.strerror})") from None
            try:
                check_registered({agency.code: [pem]})
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc.detail}") from None
            for certificate in x509.load_pem_x509_certificates(pem):
                if certificate.not_valid_after_utc < now:
                    # Not fatal: only that agency's packages are refused (expired_certificate).
                    log.warning("signatures.registered_certificate_expired", agency=agency.code,
                                file=str(path),
                                not_after=certificate.not_valid_after_utc.isoformat())
            registered.setdefault(agency.code, []).append(pem)
    return registered


def _configured(settings: Settings, directory: Directory) -> bool:
    default = Settings.__dataclass_fields__["signature_policy"].default
    return (
        bool(settings.signature_trust.strip())
        or settings.signature_policy != default
        or any(a.signature_policy is not None or a.certificates
               for a in directory.agencies.values())
    )


def load_signature_settings(
    settings: Settings, directory: Directory, directory_dir: Path
) -> SignatureSettings | None:
    """What the ingress check needs, read once at start-up; ``None`` when signatures are not
    configured at all (see the module's docstring). Raises :class:`ConfigError` naming the
    agency or setting and the file that cannot be used."""
    if not _configured(settings, directory):
        return None
    now = datetime.now(UTC)
    trust = _trust(settings)
    registered = _registered(directory, directory_dir, now)
    policies = {
        a.code: a.signature_policy
        for a in directory.agencies.values()
        if a.signature_policy is not None
    }
    signatures = SignatureSettings(
        trust=trust,
        registered=registered,
        policies=policies,
        default=SignaturePolicy(settings.signature_policy),
        allow_sha1=settings.signature_allow_sha1,
    )
    if not len(trust):
        log.warning("signatures.no_trust", detail="LIENTHONG_SIGNATURE_TRUST is empty: every "
                    "signature is untrusted_chain, accepted only under record_only")
    log.info("signatures.configured", trusted=len(trust), registered_agencies=len(registered),
             policies=len(policies), default=signatures.default.value)
    return signatures


# -- ingress ------------------------------------------------------------------------------------
def trace_entry(outcome: SignatureOutcome) -> TraceEntry:
    """The outcome as a ``header.trace`` entry; its free texts are cut when its JSON would not
    fit ``TraceEntry.detail`` (4000 characters; each text alone may be up to 1000)."""
    if len(outcome.as_json()) > _TRACE_DETAIL_MAX:
        def cut(text: str | None) -> str | None:
            return text if text is None or len(text) <= _SHORT else text[: _SHORT - 1] + "…"

        outcome = dataclasses.replace(
            outcome, detail=cut(outcome.detail) or "", algorithm=cut(outcome.algorithm),
            location=cut(outcome.location), signer_subject=cut(outcome.signer_subject),
            signer_issuer=cut(outcome.signer_issuer),
        )
    return outcome.as_trace_entry()


def check_signature(
    signatures: SignatureSettings, raw: bytes, envelope: AnyEnvelope, *, now: datetime,
    limits: XmlLimits = DEFAULT_LIMITS,
) -> tuple[AnyEnvelope, Sequence[AuditNote]]:
    """Verify ``raw`` as sent by the envelope's sender at ``now``: refuse per policy
    (:class:`SignatureRefused`), else the envelope with the outcome in its trace, and the
    outcome as an audit note."""
    sender = envelope.header.sender
    outcome = signatures.verify(raw, sender=sender, now=now, limits=limits)
    log.info("signature.checked", sender=sender, reason=outcome.reason.value,
             policy=outcome.policy.value, accepted=outcome.accepted)
    if not outcome.accepted:
        raise SignatureRefused(outcome)
    notes = [AuditNote(AUDIT_EVENT, outcome.as_dict())]
    if len(envelope.header.trace) >= _TRACE_MAX:
        # model_copy does not validate: one more entry would make an envelope that no longer
        # decodes. The audit event, the authoritative record, still has the outcome.
        log.warning("signature.trace_full", sender=sender, entries=len(envelope.header.trace))
        return envelope, notes
    header = envelope.header.model_copy(
        update={"trace": [*envelope.header.trace, trace_entry(outcome)]}
    )
    return envelope.model_copy(update={"header": header}), notes


def edxml_check(app: web.Application, limits: XmlLimits = DEFAULT_LIMITS) -> Check | None:
    """The ``check`` for :func:`gateway.ingress.admit` of an edXML package; ``None`` when the
    app has no signature settings (signatures not configured: nothing to check)."""
    signatures = app.get(SIGNATURES)
    if signatures is None:
        return None

    def check(raw: bytes, envelope: AnyEnvelope) -> tuple[AnyEnvelope, Sequence[AuditNote]]:
        return check_signature(signatures, raw, envelope, now=datetime.now(UTC), limits=limits)

    return check


# -- egress -------------------------------------------------------------------------------------
def _read(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path} ({exc.strerror})") from None


@dataclass(frozen=True, slots=True)
class GatewaySigner:
    """The gateway's signing key and certificate (chain), parsed once."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]
    limits: XmlLimits = DEFAULT_LIMITS

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes, *, now: datetime | None = None
                 ) -> GatewaySigner:
        """Check and load; :class:`ConfigError` for a key or certificate that cannot sign."""
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError:
            raise ConfigError("LIENTHONG_SIGNING_KEY: the key is encrypted; give an unencrypted "
                              "key file and protect it with file permissions") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"LIENTHONG_SIGNING_KEY: not a PEM private key ({exc})") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ConfigError(f"LIENTHONG_SIGNING_KEY: {type(key).__name__} keys cannot sign "
                              "edXML here (RSA or EC)")
        try:
            chain = tuple(x509.load_pem_x509_certificates(cert_pem))
        except ValueError as exc:
            raise ConfigError(f"LIENTHONG_SIGNING_CERTIFICATE: not PEM certificates ({exc})"
                              ) from None
        der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(der, spki) != chain[0].public_key().public_bytes(
            der, spki
        ):
            raise ConfigError("LIENTHONG_SIGNING_KEY is not the key of the (first) certificate "
                              "in LIENTHONG_SIGNING_CERTIFICATE")
        now = now or datetime.now(UTC)
        leaf = chain[0]
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            raise ConfigError(
                "LIENTHONG_SIGNING_CERTIFICATE is valid from "
                f"{leaf.not_valid_before_utc.isoformat()} to {leaf.not_valid_after_utc.isoformat()}"
                ": what it signs now would be refused"
            )
        if leaf.not_valid_after_utc - now < _EXPIRY_WARNING:
            log.warning("signing.certificate_expires_soon",
                        not_after=leaf.not_valid_after_utc.isoformat())
        return cls(key, chain)

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    def sign(self, package: bytes) -> bytes:
        """``package`` (edXML the gateway wrote) with an enveloped signature, exactly as
        :func:`gateway.signatures.sign_package` makes it. Raises a :class:`GatewayError`: a
        :class:`~gateway.errors.MalformedInput` for XML that is not, a plain one for a package
        that already carries a signature (the gateway never signs over someone else's)."""
        try:
            return sign_with(package, key=self.key, chain=self.chain, limits=self.limits)
        except GatewayError:
            raise
        except ValueError as exc:  # already signed: never over someone else's signature
            raise GatewayError(f"cannot sign: {exc}") from None
        except Exception as exc:  # a third-party library's failure, in the error tree
            raise GatewayError(f"cannot sign: {type(exc).__name__}: {exc}") from exc


#: the gateway's signer; absent: what the gateway emits is not signed
SIGNER = web.AppKey("signer", GatewaySigner)


def load_signer(settings: Settings) -> GatewaySigner | None:
    """The gateway's signer from ``LIENTHONG_SIGNING_KEY`` and ``LIENTHONG_SIGNING_CERTIFICATE``
    (both or neither); ``None`` when neither is set."""
    key_path, cert_path = settings.signing_key.strip(), settings.signing_certificate.strip()
    if not key_path and not cert_path:
        return None
    if not key_path or not cert_path:
        missing = "LIENTHONG_SIGNING_KEY" if not key_path else "LIENTHONG_SIGNING_CERTIFICATE"
        raise ConfigError(f"{missing} is needed too: the gateway signs with a key and its "
                          "certificate, or not at all")
    signer = GatewaySigner.from_pem(
        _read("LIENTHONG_SIGNING_KEY", key_path),
        _read("LIENTHONG_SIGNING_CERTIFICATE", cert_path),
    )
    log.info("signing.configured", serial=format(signer.certificate.serial_number, "X"),
             not_after=signer.certificate.not_valid_after_utc.isoformat())
    return signer


def sign_outgoing(signer: GatewaySigner | None, package: bytes) -> bytes:
    """An edXML package the gateway emits, signed when the gateway has a key."""
    return package if signer is None else signer.sign(package)


def configure(app: web.Application, settings: Settings, directory: Directory) -> None:
    """Put the signature settings and the signer into ``app`` (what is configured of them);
    relative certificate paths of the directory are taken from ``settings.directory_path``'s
    folder."""
    signatures = load_signature_settings(
        settings, directory, settings.directory_path.resolve().parent
    )
    if signatures is not None:
        app[SIGNATURES] = signatures
    signer = load_signer(settings)
    if signer is not None:
        app[SIGNER] = signer
