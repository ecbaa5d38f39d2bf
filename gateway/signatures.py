"""Digital signatures (chữ ký số) on edXML packages: verify what comes in, sign what goes out.

Pure: bytes and certificates in, a :class:`SignatureOutcome` (or signed bytes) out; the trust
store, the certificates registered per agency and the policy are values the caller passes in
(no global state, no I/O but :meth:`TrustStore.from_paths`).

Verifying (:func:`verify_package`) works on the raw bytes, before or beside the edXML codec,
which does not carry the ``Signature`` element (a signature copied into re-written XML could only
fail). The steps, each ending in one :class:`SignatureReason`:

1. hardened parse (below): hostile XML (DOCTYPE, entities, oversize, UTF-16...) raises
   :class:`~gateway.errors.MalformedInput` before any cryptography; there is no outcome and
   nothing may be stored. XML that is merely not well-formed is parsed again in libxml2's
   recover mode only to see whether it carries a signature (the codec decides whether it
   accepts the package): with one, ``unverifiable_vendor_signature``;
2. find the signature: an element ``Signature`` in the XML-DSig namespace, or, as vendors write
   it, in the edXML namespace or none. None: ``no_signature``; more than one:
   ``multiple_signatures``; one outside the XML-DSig namespace, or one without a usable
   certificate (the samples' certificates are truncated): ``unverifiable_vendor_signature``;
3. what it covers: one ``Reference`` with ``URI=""`` and the enveloped-signature transform, i.e.
   the whole package, else ``partial_signature`` (a signature over a fragment does not vouch for
   what the codec reads); SHA-1 in ``SignatureMethod`` or ``DigestMethod``: ``weak_algorithm``
   unless ``allow_sha1`` (legacy signers);
4. the cryptography, by signxml's ``XMLVerifier`` (schema-checked Signature, SignedInfo
   signature, reference digest) against the certificate the signature carries: a mismatch is
   ``tampered``. signxml is asked only whether the signature is that certificate's: its own
   validity-period check is given a time inside the certificate's period, because time and trust
   are judged here, at ``now``, after the content is known to be intact or not;
5. the certificate at ``now``: ``expired_certificate`` / ``certificate_not_yet_valid``;
6. its chain to the :class:`TrustStore` (cryptography's X.509 path validation at ``now``,
   intermediates taken from the signature's ``X509Data``): ``untrusted_chain``;
7. it must be one of the certificates registered for the sending agency (by SHA-256
   fingerprint): ``unknown_signer``; else ``valid``.

The :class:`SignaturePolicy` of the sending agency then decides ``accepted``: ``require``
accepts only ``valid``; ``verify_if_present`` accepts ``valid`` and ``no_signature``;
``record_only`` accepts everything and only records.

Parsing. signxml parses with ``etree.XMLParser(resolve_entities=False)`` by default (network and
DTD loading are libxml2's defaults, i.e. off, but nothing bounds size or depth). It is not given
the bytes: the package is parsed here with :mod:`gateway.codecs.xmlsafe`'s rules (size first,
``check_prolog`` refusing any DOCTYPE and UTF-16/32, a parser with ``resolve_entities=False,
no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False``, the parsed tree checked
for a DTD again, ``check_limits`` on depth, element count, attribute and text length) and signxml
gets the parsed root and ``parser=`` that same parser for the copies it re-parses (it also
refuses DTDs and entities itself). The one difference from ``xmlsafe.safe_parser``: comments and
processing instructions are kept, because canonicalisation may sign them and dropping them
would break an honest signature.

Signing (:func:`sign_package`): an enveloped signature with RSA-SHA256 (ECDSA-SHA256 for an EC
key), SHA-256 digest, exclusive C14N, the certificate (and any chain given with it) in
``KeyInfo/X509Data``, placed as the last child of ``edXMLEnvelope/edXMLHeader`` where the
standard's packages carry it (the root element if the document has no such header). The package
is parsed under the same rules first; signxml then copies the tree it is given by serialising
and re-parsing it with its own parser (``resolve_entities=False``), i.e. only XML this module has
already parsed.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidDigest, InvalidSignature
from signxml.signer import XMLSigner
from signxml.verifier import SignatureConfiguration, XMLVerifier

from gateway.codecs import xmlsafe
from gateway.codecs.xmlsafe import DEFAULT_LIMITS, XmlLimits
from gateway.envelope import TraceEntry
from gateway.errors import ConfigError, FieldError, MalformedInput, UnprocessableRequest

__all__ = [
    "AUDIT_EVENT",
    "TRACE_EVENT",
    "SignatureOutcome",
    "SignaturePolicy",
    "SignatureReason",
    "SignatureSettings",
    "TrustStore",
    "check_registered",
    "sign_package",
    "verify_package",
]

DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
EDXML_NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
#: ``TraceEntry.event`` of the outcome in an envelope's trace.
TRACE_EVENT = "edxml.signature"
#: The audit-trail event name for the outcome (``audit_events.event`` is 32 characters at most).
AUDIT_EVENT = "signature_checked"
#: Where the signature of an edXML package is, for a rejection that cannot name a found one.
DEFAULT_LOCATION = "/edXML/edXMLEnvelope/edXMLHeader/Signature"

_TEXT_MAX = 1000  # subject, issuer and detail are cut here so that the trace detail stays small


class SignaturePolicy(enum.StrEnum):
    """What an agency's packages must carry (set per agency)."""

    REQUIRE = "require"  # a valid signature, or the package is refused
    VERIFY_IF_PRESENT = "verify_if_present"  # unsigned passes; a signature present must be valid
    RECORD_ONLY = "record_only"  # never refused: the outcome is only recorded


class SignatureReason(enum.StrEnum):
    VALID = "valid"
    NO_SIGNATURE = "no_signature"
    TAMPERED = "tampered"  # a digest or the signature value does not match the content
    UNKNOWN_SIGNER = "unknown_signer"  # trusted chain, but not registered for the sender
    EXPIRED_CERTIFICATE = "expired_certificate"
    NOT_YET_VALID = "certificate_not_yet_valid"
    UNTRUSTED_CHAIN = "untrusted_chain"
    UNVERIFIABLE = "unverifiable_vendor_signature"  # present, but cannot be checked at all
    WEAK_ALGORITHM = "weak_algorithm"  # SHA-1 (unless allowed) or an unknown algorithm
    PARTIAL = "partial_signature"  # does not cover the whole package
    MULTIPLE = "multiple_signatures"


def _accepts(policy: SignaturePolicy, reason: SignatureReason) -> bool:
    if policy is SignaturePolicy.RECORD_ONLY:
        return True
    if policy is SignaturePolicy.REQUIRE:
        return reason is SignatureReason.VALID
    return reason in (SignatureReason.VALID, SignatureReason.NO_SIGNATURE)


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= _TEXT_MAX:
        return text
    return text[: _TEXT_MAX - 1] + "…"


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value


@dataclass(frozen=True, slots=True)
class SignatureOutcome:
    """What the signature check found, and whether the sender's policy accepts the package.

    ``signer_*`` describe the certificate the signature names (for a signature in the XML-DSig
    namespace, its signing certificate; for a vendor signature, the first certificate that can be
    read), also when the signature is not valid: they are proved only when ``valid``.
    ``signer_serial`` is hexadecimal (as CAs print it), ``signer_fingerprint`` the SHA-256 of the
    certificate's DER, hexadecimal.
    """

    sender: str
    policy: SignaturePolicy
    present: bool
    valid: bool
    reason: SignatureReason
    accepted: bool
    checked_at: datetime
    detail: str
    location: str | None = None  # element path of the Signature
    algorithm: str | None = None  # SignatureMethod URI
    signer_subject: str | None = None  # RFC 4514
    signer_serial: str | None = None
    signer_issuer: str | None = None
    signer_fingerprint: str | None = None
    signer_not_before: datetime | None = None
    signer_not_after: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: enums as their values, instants as ISO 8601 with offset."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, datetime):
                value = value.isoformat()
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignatureOutcome:
        """The outcome :meth:`as_dict` wrote (e.g. read back from the audit trail)."""
        values = dict(data)
        values["policy"] = SignaturePolicy(values["policy"])
        values["reason"] = SignatureReason(values["reason"])
        for name in ("checked_at", "signer_not_before", "signer_not_after"):
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        return cls(**values)

    def as_json(self) -> str:
        return orjson.dumps(self.as_dict()).decode()

    def as_trace_entry(self) -> TraceEntry:
        """The outcome as one entry of the envelope's ``header.trace``."""
        return TraceEntry(
            at=self.checked_at, event=TRACE_EVENT, agency=self.sender, detail=self.as_json()
        )

    def rejection(self) -> UnprocessableRequest | None:
        """The error to answer with when the policy refuses the package, else None."""
        if self.accepted:
            return None
        what = f"signature {self.reason.value} (policy {self.policy.value})"
        return UnprocessableRequest(
            f"package from {self.sender} refused: {what}: {self.detail}",
            errors=[FieldError(self.location or DEFAULT_LOCATION, f"{what}: {self.detail}")],
        )

    def raise_for_policy(self) -> None:
        error = self.rejection()
        if error is not None:
            raise error


# -- trust ------------------------------------------------------------------------------------
def _load_pems(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(bytes(pem))
    except ValueError as exc:
        raise ConfigError(f"{what}: not PEM certificates ({exc})") from None
    return certificates


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


@dataclass(frozen=True, slots=True)
class TrustStore:
    """The CA certificates a signer's chain must end in. Every certificate is an anchor: put
    the roots (and any issuing CA) that are trusted; intermediates a signature carries in its
    ``X509Data`` are used to build the path."""

    certificates: tuple[x509.Certificate, ...]
    _store: verification.Store | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for certificate in self.certificates:
            if not _is_ca(certificate):
                subject = certificate.subject.rfc4514_string()
                raise ConfigError(f"trust store: {subject} is not a CA certificate")
        store = verification.Store(list(self.certificates)) if self.certificates else None
        object.__setattr__(self, "_store", store)

    @classmethod
    def from_pem(cls, *pems: bytes) -> TrustStore:
        """From PEM bytes, each holding one certificate or several."""
        found: list[x509.Certificate] = []
        for index, pem in enumerate(pems):
            found.extend(_load_pems(pem, f"trust store PEM {index}"))
        return cls(tuple(found))

    @classmethod
    def from_paths(cls, *paths: str | Path) -> TrustStore:
        """From PEM files (the one I/O function of this module)."""
        found: list[x509.Certificate] = []
        for path in paths:
            try:
                pem = Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"trust store: cannot read {path}: {exc.strerror}") from None
            found.extend(_load_pems(pem, f"trust store {path}"))
        return cls(tuple(found))

    def __len__(self) -> int:
        return len(self.certificates)

    def chain_error(
        self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], now: datetime
    ) -> str | None:
        """Why ``leaf`` does not chain to this store at ``now`` (None: it does)."""
        if self._store is None:
            return "the trust store is empty"
        builder = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(now)
            .extension_policies(ee_policy=_EE_POLICY, ca_policy=_CA_POLICY)
        )
        try:
            builder.build_client_verifier().verify(leaf, list(intermediates))
        except verification.VerificationError as exc:
            return str(exc)
        return None


def _signing_key_usage(
    _policy: verification.Policy, _cert: x509.Certificate, usage: x509.KeyUsage | None
) -> None:
    if usage is None or not (usage.digital_signature or usage.content_commitment):
        raise ValueError("certificate KeyUsage allows neither digitalSignature nor nonRepudiation")


# The signer's certificate: any extension, but a KeyUsage for signing (signxml's default policy
# with nonRepudiation also accepted, as document-signing certificates carry it); CAs: WebPKI's.
_EE_POLICY = verification.ExtensionPolicy.permit_all().require_present(
    x509.KeyUsage, verification.Criticality.AGNOSTIC, _signing_key_usage
)
_CA_POLICY = verification.ExtensionPolicy.webpki_defaults_ca()


def _fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


@functools.lru_cache(maxsize=1024)
def _registered_fingerprints(pem: bytes) -> frozenset[str]:
    return frozenset(_fingerprint(c) for c in _load_pems(pem, "registered certificate"))


def _registered_for(registered: Mapping[str, Sequence[bytes]], agency: str) -> frozenset[str]:
    found: set[str] = set()
    for index, pem in enumerate(registered.get(agency, ())):
        try:
            found |= _registered_fingerprints(bytes(pem))
        except ConfigError as exc:
            raise ConfigError(
                f"registered signer certificates of {agency}[{index}]: {exc.detail}"
            ) from None
    return frozenset(found)


def check_registered(registered: Mapping[str, Sequence[bytes]]) -> None:
    """Check every registered certificate parses (at start-up, naming the agency at fault)."""
    for agency in registered:
        _registered_for(registered, agency)


# -- parsing ----------------------------------------------------------------------------------
def _refused(detail: str) -> MalformedInput:
    return MalformedInput(f"refused XML: {detail}", errors=[FieldError("", detail)])


@dataclass(frozen=True, slots=True)
class _Parsed:
    root: etree._Element
    parser: etree.XMLParser
    syntax_error: str | None  # set when the document is not well-formed (recovered tree)


def _parse(data: bytes, limits: XmlLimits) -> _Parsed:
    """xmlsafe.parse's rules, with comments and PIs kept; a document that is hostile raises,
    one that is only not well-formed comes back recovered, with its error."""
    data = xmlsafe.check_input(data, limits)  # no DOCTYPE, no UTF-16/32, size: first
    parser = xmlsafe.safe_parser(keep_comments=True)
    error: str | None = None
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        malformed = xmlsafe.syntax_error(exc, data)
        parser = xmlsafe.safe_parser(recover=True, keep_comments=True)
        try:
            recovered: etree._Element | None = etree.fromstring(data, parser)
        except etree.XMLSyntaxError:
            recovered = None
        if recovered is None:
            raise malformed from None
        root, error = recovered, malformed.detail
    docinfo: Any = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise _refused("line 1: a DOCTYPE is not allowed (no DTDs, no entities)")
    xmlsafe.check_limits(root, limits, len(data))
    return _Parsed(root, parser, error)


# -- verifying --------------------------------------------------------------------------------
def _signatures(root: etree._Element) -> list[etree._Element]:
    found: Any = root.xpath("//*[local-name()='Signature']")
    return [
        el
        for el in found
        if isinstance(el, etree._Element) and etree.QName(el).namespace in (DSIG_NS, EDXML_NS, None)
    ]


def _certificates(signature: etree._Element) -> list[x509.Certificate | None]:
    """The certificates of the signature's X509Certificate elements, None for one that is not a
    certificate (truncated, not base64)."""
    out: list[x509.Certificate | None] = []
    found: Any = signature.xpath(".//*[local-name()='X509Certificate']")
    for el in found:
        text = "".join((el.text or "").split())
        try:
            out.append(x509.load_der_x509_certificate(base64.b64decode(text, validate=True)))
        except (ValueError, binascii.Error):
            out.append(None)
    return out


def _leaf(certificates: Sequence[x509.Certificate]) -> x509.Certificate:
    """The signing certificate among those X509Data carries (in any order): the first that is
    not a CA, else the first."""
    for certificate in certificates:
        if not _is_ca(certificate):
            return certificate
    return certificates[0]


@dataclass(frozen=True, slots=True)
class _Signer:
    subject: str | None = None
    serial: str | None = None
    issuer: str | None = None
    fingerprint: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None

    @classmethod
    def of(cls, certificate: x509.Certificate | None) -> _Signer:
        if certificate is None:
            return cls()

        def name(value: x509.Name) -> str | None:
            try:
                return _cut(value.rfc4514_string())
            except ValueError:
                return None

        return cls(
            subject=name(certificate.subject),
            serial=format(certificate.serial_number, "X"),
            issuer=name(certificate.issuer),
            fingerprint=_fingerprint(certificate),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
        )


def _algorithm_uris(signature: etree._Element, name: str) -> list[str]:
    found: Any = signature.xpath(f".//*[local-name()='{name}']/@Algorithm")
    return [str(uri) for uri in found]


_SIGNATURE_METHODS = frozenset(m.value for m in SignatureMethod)
_DIGEST_METHODS = frozenset(d.value for d in DigestAlgorithm)


def _weak_algorithm(signature: etree._Element, allow_sha1: bool) -> str | None:
    for uri in _algorithm_uris(signature, "SignatureMethod"):
        if uri not in _SIGNATURE_METHODS or uri.startswith(
            "http://www.w3.org/2000/09/xmldsig#hmac"
        ):
            return f"signature method {uri} is not supported"
        if uri.endswith("sha1") and not allow_sha1:
            return f"signature method {uri} uses SHA-1"
    for uri in _algorithm_uris(signature, "DigestMethod"):
        if uri not in _DIGEST_METHODS:
            return f"digest method {uri} is not supported"
        if uri.endswith("sha1") and not allow_sha1:
            return f"digest method {uri} uses SHA-1"
    return None


def _coverage_error(signature: etree._Element) -> str | None:
    references: Any = signature.xpath("./*[local-name()='SignedInfo']/*[local-name()='Reference']")
    if len(references) != 1:
        return f"{len(references)} references: the package must be signed as one whole"
    reference = references[0]
    if reference.get("URI") != "":
        return f'the reference {reference.get("URI")!r} is not the whole package (URI="")'
    transforms = _algorithm_uris(reference, "Transform")
    if ENVELOPED not in transforms:
        return "the reference has no enveloped-signature transform"
    return None


def _signxml_config(leaf: x509.Certificate, allow_sha1: bool) -> SignatureConfiguration:
    # Algorithms were screened by _weak_algorithm; the certificate's time is judged at `now`
    # by the caller, so signxml checks at a time inside the certificate's period.
    methods = frozenset(
        m
        for m in SignatureMethod
        if not m.name.startswith("HMAC") and (allow_sha1 or "SHA1" not in m.name)
    )
    digests = frozenset(d for d in DigestAlgorithm if allow_sha1 or "SHA1" not in d.name)
    return SignatureConfiguration(
        require_x509=True,
        location=".//",
        expect_references=1,
        signature_methods=methods,
        digest_algorithms=digests,
        verification_time=leaf.not_valid_before_utc + timedelta(seconds=1)
        if leaf.not_valid_before_utc < leaf.not_valid_after_utc
        else leaf.not_valid_before_utc,
    )


def verify_package(
    raw_xml: bytes,
    *,
    sender: str,
    policy: SignaturePolicy,
    trust: TrustStore,
    registered: Mapping[str, Sequence[bytes]],
    now: datetime,
    allow_sha1: bool = False,
    limits: XmlLimits = DEFAULT_LIMITS,
) -> SignatureOutcome:
    """Check the enveloped XML-DSig signature of ``raw_xml``, sent by agency ``sender``.

    Never raises for a signature's fault (that is the outcome); raises
    :class:`~gateway.errors.MalformedInput` for hostile XML (before any cryptography) and for
    bytes that are no XML at all, :class:`~gateway.errors.ConfigError` for a registered
    certificate that is not PEM."""
    now = _aware(now, "now")
    policy = SignaturePolicy(policy)
    parsed = _parse(raw_xml, limits)

    def outcome(
        reason: SignatureReason,
        detail: str,
        *,
        signature: etree._Element | None = None,
        signer: _Signer | None = None,
    ) -> SignatureOutcome:
        signer = signer or _Signer()
        algorithm = None
        if signature is not None:
            found = _algorithm_uris(signature, "SignatureMethod")
            algorithm = found[0] if found else None
        return SignatureOutcome(
            sender=sender,
            policy=policy,
            present=reason is not SignatureReason.NO_SIGNATURE,
            valid=reason is SignatureReason.VALID,
            reason=reason,
            accepted=_accepts(policy, reason),
            checked_at=now,
            detail=_cut(detail) or "",
            location=xmlsafe.element_path(signature) if signature is not None else None,
            algorithm=_cut(algorithm),
            signer_subject=signer.subject,
            signer_serial=signer.serial,
            signer_issuer=signer.issuer,
            signer_fingerprint=signer.fingerprint,
            signer_not_before=signer.not_before,
            signer_not_after=signer.not_after,
        )

    R = SignatureReason
    found = _signatures(parsed.root)
    if not found:
        return outcome(R.NO_SIGNATURE, "the package carries no signature")
    if len(found) > 1:
        where = ", ".join(xmlsafe.element_path(s) for s in found[:5])
        return outcome(R.MULTIPLE, f"{len(found)} Signature elements ({where})", signature=found[0])
    [signature] = found
    certificates = _certificates(signature)
    first_readable = next((c for c in certificates if c is not None), None)
    if parsed.syntax_error is not None:
        return outcome(
            R.UNVERIFIABLE,
            f"the package is not well-formed XML, so no signature over it can be checked "
            f"({parsed.syntax_error})",
            signature=signature,
            signer=_Signer.of(first_readable),
        )
    if etree.QName(signature).namespace != DSIG_NS:
        return outcome(
            R.UNVERIFIABLE,
            "the Signature is not in the XML-DSig namespace (" + DSIG_NS + "): its SignedInfo "
            "cannot be canonicalised as signed",
            signature=signature,
            signer=_Signer.of(first_readable),
        )
    if not certificates:
        return outcome(
            R.UNVERIFIABLE,
            "the signature carries no X509Certificate: the signer cannot be identified",
            signature=signature,
        )
    if first_readable is None or None in certificates:
        return outcome(
            R.UNVERIFIABLE,
            "an X509Certificate of the signature is not a valid certificate (truncated?)",
            signature=signature,
            signer=_Signer.of(first_readable),
        )
    chain = [c for c in certificates if c is not None]
    leaf = _leaf(chain)
    signer = _Signer.of(leaf)
    problem = _coverage_error(signature)
    if problem is not None:
        return outcome(R.PARTIAL, problem, signature=signature, signer=signer)
    problem = _weak_algorithm(signature, allow_sha1)
    if problem is not None:
        return outcome(R.WEAK_ALGORITHM, problem, signature=signature, signer=signer)

    try:
        XMLVerifier().verify(
            parsed.root,
            x509_cert=leaf,
            parser=parsed.parser,
            expect_config=_signxml_config(leaf, allow_sha1),
        )
    except (InvalidDigest, InvalidSignature) as exc:
        # InvalidCertificate is an InvalidSignature too, but signxml checks only the period,
        # which _signxml_config keeps inside the certificate's.
        return outcome(
            R.TAMPERED,
            f"the package does not match its signature: {exc}",
            signature=signature,
            signer=signer,
        )
    except Exception as exc:  # attacker-shaped input into a third-party library
        # InvalidInput (a ValueError), a Signature that breaks the XML-DSig schema
        # (DocumentInvalid), an empty SignatureValue (TypeError in b64decode), base64 that is
        # not, a key that does not fit the method...: no signature fault may escape as a crash.
        return outcome(
            R.UNVERIFIABLE,
            f"the signature cannot be checked: {type(exc).__name__}: {exc}",
            signature=signature,
            signer=signer,
        )

    if now < leaf.not_valid_before_utc:
        return outcome(
            R.NOT_YET_VALID,
            f"the certificate is valid from {leaf.not_valid_before_utc.isoformat()}",
            signature=signature,
            signer=signer,
        )
    if now > leaf.not_valid_after_utc:
        return outcome(
            R.EXPIRED_CERTIFICATE,
            f"the certificate expired at {leaf.not_valid_after_utc.isoformat()}",
            signature=signature,
            signer=signer,
        )
    problem = trust.chain_error(leaf, [c for c in chain if c is not leaf], now)
    if problem is not None:
        return outcome(
            R.UNTRUSTED_CHAIN,
            f"the certificate does not chain to the trust store: {problem}",
            signature=signature,
            signer=signer,
        )
    if signer.fingerprint not in _registered_for(registered, sender):
        return outcome(
            R.UNKNOWN_SIGNER,
            f"the certificate is not registered for {sender}",
            signature=signature,
            signer=signer,
        )
    return outcome(R.VALID, "the signature is valid", signature=signature, signer=signer)


@dataclass(frozen=True, slots=True)
class SignatureSettings:
    """Everything :func:`verify_package` needs besides the package, as one value for the app:
    the trust store, the registered certificates and each agency's policy (``default`` for an
    agency without one)."""

    trust: TrustStore
    registered: Mapping[str, Sequence[bytes]] = field(default_factory=dict)
    policies: Mapping[str, SignaturePolicy] = field(default_factory=dict)
    default: SignaturePolicy = SignaturePolicy.VERIFY_IF_PRESENT
    allow_sha1: bool = False

    def __post_init__(self) -> None:
        check_registered(self.registered)

    def policy_for(self, agency: str) -> SignaturePolicy:
        return self.policies.get(agency, self.default)

    def verify(self, raw_xml: bytes, *, sender: str, now: datetime,
               limits: XmlLimits = DEFAULT_LIMITS) -> SignatureOutcome:
        return verify_package(
            raw_xml,
            sender=sender,
            policy=self.policy_for(sender),
            trust=self.trust,
            registered=self.registered,
            now=now,
            allow_sha1=self.allow_sha1,
            limits=limits,
        )


# -- signing ----------------------------------------------------------------------------------
def _load_key(
    key_pem: bytes, password: bytes | None
) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(bytes(key_pem), password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"signing key: cannot load the PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"signing key: {type(key).__name__} keys are not supported (RSA, EC)")
    return key


def sign_package(
    raw_xml: bytes,
    *,
    key_pem: bytes,
    cert_pem: bytes,
    password: bytes | None = None,
    limits: XmlLimits = DEFAULT_LIMITS,
) -> bytes:
    """``raw_xml`` (an edXML package, e.g. from ``encode_edxml``) with an enveloped signature.

    ``cert_pem`` holds the gateway's certificate, optionally followed by its chain; the key must
    be the certificate's. Raises :class:`~gateway.errors.ConfigError` for a key or certificate
    that cannot be used, :class:`~gateway.errors.MalformedInput` for XML that is not, and
    ``ValueError`` for a package that already carries a signature (the gateway signs what it
    writes, never on top of someone else's signature)."""
    key = _load_key(key_pem, password)
    chain = _load_pems(cert_pem, "signing certificate")
    if not chain:
        raise ConfigError("signing certificate: no certificate in the PEM")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != chain[0].public_key().public_bytes(
        der, public
    ):
        raise ConfigError("signing key: it is not the key of the (first) signing certificate")
    return sign_with(raw_xml, key=key, chain=chain, limits=limits)


def sign_with(
    raw_xml: bytes,
    *,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    chain: Sequence[x509.Certificate],
    limits: XmlLimits = DEFAULT_LIMITS,
) -> bytes:
    """:func:`sign_package` with a key and certificate chain already loaded and checked (the
    gateway's signer loads them once)."""
    parsed = _parse(raw_xml, limits)
    if parsed.syntax_error is not None:
        raise MalformedInput(f"cannot sign XML that is not well-formed: {parsed.syntax_error}")
    root = parsed.root
    if _signatures(root):
        raise ValueError("the package already carries a Signature")
    method = (
        SignatureMethod.RSA_SHA256
        if isinstance(key, rsa.RSAPrivateKey)
        else SignatureMethod.ECDSA_SHA256
    )

    header = root.find(f"{{{EDXML_NS}}}edXMLEnvelope/{{{EDXML_NS}}}edXMLHeader")
    parent = header if header is not None else root
    placeholder = etree.SubElement(
        parent, f"{{{DSIG_NS}}}Signature", {"Id": "placeholder"}, nsmap={"ds": DSIG_NS}
    )
    # Indented like its siblings (cosmetic: signing and verifying treat the text around it alike).
    previous = placeholder.getprevious()
    indent = parent.text or ""
    if previous is not None and not (previous.tail or "").strip() and indent and not indent.strip():
        placeholder.tail, previous.tail = previous.tail, indent

    signer = XMLSigner(
        signature_algorithm=method,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )
    signed = signer.sign(root, key=key, cert=list(chain))
    return etree.tostring(signed, xml_declaration=True, encoding="UTF-8")
