"""The bridge to the central document hub (Trục liên thông văn bản quốc gia), both directions.

The hub's protocol (signed HTTP calls carrying edXML packages) is specified in
:mod:`deploy.peers.central_hub`, the server that plays the hub in the tests and the demo, and
explained in ``docs/central-hub.md``. Three parts:

:class:`HubClient`
    One signed call per method (``X-Lienthong-System``, ``-Timestamp``, ``-Signature`` = hex
    HMAC-SHA256 of ``METHOD\\nTARGET\\nTIMESTAMP\\nsha256(body)``). Failures are mapped where
    they happen: connection errors, timeouts, 5xx, 408, 425 and 429 are :class:`RetryLater`
    (with ``Retry-After``); any other 4xx is :class:`PermanentFailure` with the hub's words
    (a wrong secret, 401, is permanent: retrying cannot fix it, an operator must).

:class:`HubTransport` (outbound)
    The :class:`~gateway.delivery.Transport` for agencies whose directory entry says
    ``delivery: {mode: hub}``. It writes the canonical envelope as edXML (``document`` ->
    ``messageType: edoc``, ``status`` -> ``status``) and sends it for that one recipient
    (``X-Lienthong-To``) under our message id (``X-Lienthong-Message-Id``): the hub keeps one
    document per (system, message id, recipient), so a retry after a lost answer stores
    nothing new. A status about a document that came from the hub names that document by the
    ``DocumentId`` it came with, so that its sender can match the two.

:class:`HubPoller` (inbound)
    Every ``LIENTHONG_HUB_POLL_INTERVAL``: list the documents waiting for our system, fetch
    each, and admit it through :func:`gateway.ingress.admit` as its ``From/OrganId``, which
    must be an agency the directory reaches through the hub (the hub speaks only for the
    agencies behind it). The package is addressed to those of its ``To`` agencies that this
    gateway serves (never back to hub agencies, which the hub already served); then the
    document is marked ``done``. A package the gateway refuses for good (not XML, schema,
    unknown recipient, a sender the hub cannot speak for...) is marked ``fail`` with the
    RFC 7807 problem, and logged; a transient failure (store or broker away, hub away) leaves
    it listed for the next poll. A status names the document it answers by the DocumentId that
    document travelled with (``ResponseFor/DocumentId``); when the sender chose that id itself,
    it is matched to the document our agency sent under it. Admission is idempotent by the
    package's bytes (the
    idempotency key is ``hub:`` + their SHA-256) and by its message id, so a package fetched
    again (a lost ``done``, or several gateway processes polling at once) is one message.

As an adapter (:data:`ADAPTER`): the edXML codec, mode ``hub`` with :class:`HubTransport`
(when ``LIENTHONG_HUB_URL`` is set) and the poller as its background task; no routes of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web
from yarl import URL

from adapters.base import Adapter
from adapters.document_management import EDXML
from gateway.api.keys import BLOBS, DIRECTORY, SETTINGS, STORE
from gateway.blobs import STREAM_ABOVE, BlobStore, spool_package
from gateway.codecs import decode, decode_edxml, encode_edxml, xmlsafe
from gateway.codecs.edxml import (
    CARRY_KEY,
    STREAM_LIMITS,
    carried,
    document_id,
    iter_edxml,
    stored_attachments,
)
from gateway.delivery import Delivery, parse_retry_after, pieces_of, stored_files_exist
from gateway.directory import Agency, DeliveryMode
from gateway.envelope import (
    AgencyAddress,
    AnyEnvelope,
    DocumentEnvelope,
    StatusEnvelope,
    TraceEntry,
)
from gateway.errors import (
    ConfigError,
    DeliveryError,
    FieldError,
    Forbidden,
    GatewayError,
    NotFound,
    PermanentFailure,
    RetryLater,
    TooLarge,
    UnprocessableRequest,
)
from gateway.ingress import Check, admit
from gateway.settings import Settings
from gateway.signing import SIGNER, edxml_check
from gateway.store.store import Accepted, Store

log = structlog.get_logger(__name__)

SYSTEM_HEADER = "X-Lienthong-System"
TIMESTAMP_HEADER = "X-Lienthong-Timestamp"
SIGNATURE_HEADER = "X-Lienthong-Signature"
MESSAGE_ID_HEADER = "X-Lienthong-Message-Id"
TO_HEADER = "X-Lienthong-To"
MESSAGE_TYPE_HEADER = "messageType"

SENDER_AT = "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/From/OrganId"
_RESPONSE_FOR_ID = ("//*[local-name()='MessageHeader']/*[local-name()='ResponseFor']"
                    "/*[local-name()='DocumentId']/text()")
TO_AT = "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/To"
_RETRYABLE_STATUS = {408, 425, 429}
_REASON_LIMIT = 2000


# -- signing (pure) ---------------------------------------------------------------------------
def canonical_request(method: str, target: str, timestamp: str, body: bytes, *,
                      body_sha256: str | None = None) -> bytes:
    """``METHOD\\nTARGET\\nTIMESTAMP\\nhex(sha256(body))``: what a signature covers. TARGET is
    the request target as sent (path and query, percent-encoded). ``body_sha256``: the body's
    digest, for a body streamed from disk and never held (``body`` is then ignored)."""
    digest = body_sha256 if body_sha256 is not None else hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{target}\n{timestamp}\n{digest}".encode()


def sign(secret: str, method: str, target: str, timestamp: str, body: bytes, *,
         body_sha256: str | None = None) -> str:
    """Hex HMAC-SHA256 of the canonical request under the system's secret."""
    message = canonical_request(method, target, timestamp, body, body_sha256=body_sha256)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(
    system: str, secret: str, method: str, target: str, body: bytes, now: float, *,
    body_sha256: str | None = None,
) -> dict[str, str]:
    timestamp = str(int(now))
    return {
        SYSTEM_HEADER: system,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, method, target, timestamp, body, body_sha256=body_sha256),
    }


@dataclass(frozen=True, slots=True)
class StreamedBody:
    """A request body written piece by piece (a package whose files come from the blob
    store): its digest and length measured by a first pass, its pieces by a second."""

    sha256: str
    length: int
    pieces: Callable[[], AsyncIterator[bytes]]


# -- the client -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReceivedDoc:
    """One entry of ``/getReceivedEdocList``."""

    doc_id: str
    message_type: str
    message_id: str
    sender: str
    sender_system: str
    to: str


@dataclass(frozen=True, slots=True)
class HubAgency:
    code: str
    name: str
    system: str


def _error_text(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])[:300]
    return ""


async def _read_at_most(response: aiohttp.ClientResponse, limit: int, path: str) -> bytes:
    """The answer's body, refused once it passes ``limit`` bytes (before reading them all,
    when the answer says its length)."""
    too_large = TooLarge(f"hub {path}: the package is larger than the limit of {limit} bytes "
                         "(LIENTHONG_MAX_PACKAGE_BYTES)")
    if response.content_length is not None and response.content_length > limit:
        raise too_large
    content = bytearray()
    async for piece in response.content.iter_chunked(256 * 1024):
        content += piece
        if len(content) > limit:
            raise too_large
    return bytes(content)


class HubClient:
    """Signed calls to the hub as one system. The session is the caller's."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        system_id: str,
        secret: str,
        *,
        timeout: float,
        clock: Callable[[], float] = time.time,
        max_package_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        if not base_url or not system_id or not secret:
            raise ConfigError("the hub client needs a URL, a system id and a secret")
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.system_id = system_id
        self._secret = secret  # never logged, never in an error
        self.timeout = timeout
        self.clock = clock
        self.max_package_bytes = max_package_bytes  # what /getEdoc may answer, at most

    @classmethod
    def from_settings(cls, settings: Settings, session: aiohttp.ClientSession) -> HubClient:
        if not settings.hub_system_id or not settings.hub_secret:
            raise ConfigError(
                "LIENTHONG_HUB_URL is set: LIENTHONG_HUB_SYSTEM_ID and LIENTHONG_HUB_SECRET "
                "are needed too"
            )
        return cls(session, settings.hub_url, settings.hub_system_id, settings.hub_secret,
                   timeout=settings.push_timeout, max_package_bytes=settings.max_package_bytes)

    def __repr__(self) -> str:
        return f"HubClient({self.base_url!r}, system={self.system_id!r})"

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | StreamedBody = b"",
        headers: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> tuple[bytes, Mapping[str, str]]:
        """One signed request: the body and headers of a 2xx answer, else the mapped error.
        ``limit``: the most bytes the answer may have (:class:`TooLarge` past it)."""
        url = URL(self.base_url + path)
        if params:
            url = url.with_query(params)
        sent = dict(headers or {})
        data: Any
        if isinstance(body, StreamedBody):
            sent |= signed_headers(self.system_id, self._secret, method, url.raw_path_qs, b"",
                                   self.clock(), body_sha256=body.sha256)
            # A length, not chunked encoding: what a hub behind any proxy accepts.
            sent["Content-Length"] = str(body.length)
            data = body.pieces()
        else:
            sent |= signed_headers(
                self.system_id, self._secret, method, url.raw_path_qs, body, self.clock()
            )
            # A file-like body is written in pieces (aiohttp warns that a large bytes body
            # would hold the event loop while it is written).
            data = io.BytesIO(body) if body else None
        try:
            async with self.session.request(
                method, url, data=data, headers=sent,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                status = response.status
                if limit is None or not 200 <= status < 300:
                    content = await response.read()
                else:
                    content = await _read_at_most(response, limit, path)
                answer_headers: Mapping[str, str] = response.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RetryLater(f"hub {path}: {exc.__class__.__name__}: {exc}") from exc
        if 200 <= status < 300:
            return content, answer_headers
        detail = f"hub {path} answered HTTP {status}: {_error_text(content)}".rstrip(": ")
        if status in _RETRYABLE_STATUS or status >= 500:
            raise RetryLater(detail, delay=parse_retry_after(answer_headers.get("Retry-After")))
        raise PermanentFailure(detail)

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        content, _ = await self._call(method, path, **kwargs)
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            # A proxy's error page with a 200: the call may not have reached the hub.
            raise RetryLater(f"hub {path} answered something that is not JSON") from None

    async def send_edoc(
        self, package: bytes | StreamedBody, *, message_type: str, message_id: str | None = None,
        to: Sequence[str] = (),
    ) -> list[str]:
        """Send one package; the hub's document ids (one per recipient). Without a message id
        the hub takes the package's DocumentId (or its hash) as the idempotency key."""
        headers = {"Content-Type": "application/xml", MESSAGE_TYPE_HEADER: message_type}
        if message_id:
            headers[MESSAGE_ID_HEADER] = message_id
        if to:
            headers[TO_HEADER] = ",".join(to)
        data = await self._json("POST", "/sendEdoc", body=package, headers=headers)
        docs = data.get("docs") if isinstance(data, dict) else None
        if not isinstance(docs, list):
            raise RetryLater("hub /sendEdoc answered without docs")
        return [str(d["docId"]) for d in docs if isinstance(d, dict) and "docId" in d]

    async def received(self, message_type: str | None = None) -> list[ReceivedDoc]:
        """The documents waiting for this system, oldest first."""
        params = {"messageType": message_type} if message_type else None
        data = await self._json("GET", "/getReceivedEdocList", params=params)
        entries = data.get("docs") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise RetryLater("hub /getReceivedEdocList answered without docs")
        docs: list[ReceivedDoc] = []
        for entry in entries:
            try:
                docs.append(ReceivedDoc(
                    doc_id=str(entry["docId"]), message_type=str(entry["messageType"]),
                    message_id=str(entry.get("messageId", "")), sender=str(entry["from"]),
                    sender_system=str(entry.get("fromSystem", "")), to=str(entry["to"]),
                ))
            except (KeyError, TypeError):
                log.warning("hub.list_entry_malformed", entry=str(entry)[:200])
        return docs

    async def get_edoc(self, doc_id: str) -> bytes:
        """The package; :class:`TooLarge` when it has more than ``max_package_bytes``."""
        content, _ = await self._call("GET", "/getEdoc", params={"docId": doc_id},
                                      limit=self.max_package_bytes)
        return content

    async def update_status(
        self, doc_id: str, status: str, *, reason: str | None = None,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        body: dict[str, Any] = {"docId": doc_id, "status": status}
        if reason is not None:
            body["reason"] = reason
        if problem is not None:
            body["problem"] = dict(problem)
        await self._call("POST", "/updateStatus", body=orjson.dumps(body),
                         headers={"Content-Type": "application/json"})

    async def edoc_status(self, doc_id: str) -> dict[str, Any]:
        """What became of a document this system sent (``pending``/``done``/``fail``)."""
        data = await self._json("GET", "/getEdocStatus", params={"docId": doc_id})
        return data if isinstance(data, dict) else {}

    async def agencies(self) -> list[HubAgency]:
        data = await self._json("GET", "/getAgenciesList")
        entries = data.get("agencies") if isinstance(data, dict) else None
        return [
            HubAgency(str(a["code"]), str(a.get("name", a["code"])), str(a["system"]))
            for a in entries or [] if isinstance(a, dict) and "code" in a and "system" in a
        ]


# -- outbound ---------------------------------------------------------------------------------
def answering(status: StatusEnvelope, original_document_id: str) -> StatusEnvelope:
    """The status with ``ResponseFor/DocumentId`` written as the document's own DocumentId
    (through the edXML residual, the codec's place for what the Envelope has no field for),
    instead of our message id, which the document's sender never saw. ``original_document_id``
    is the DocumentId of the document the status is about (a recall or an update carries its
    document's id, though its message id is not derived from it)."""
    residual = carried(status)
    header = residual.setdefault("edXMLEnvelope", {}).setdefault("edXMLHeader", {})
    message_header = header.setdefault("MessageHeader", {})
    response_for = message_header.get("ResponseFor")
    if not isinstance(response_for, list) or not response_for:
        response_for = [{}]
    if not isinstance(response_for[0], dict):
        response_for[0] = {}
    response_for[0]["DocumentId"] = original_document_id
    message_header["ResponseFor"] = response_for
    text = orjson.dumps(residual).decode()
    if len(text) > 4000:  # one trace entry's limit; the message id still names the document
        return status
    trace = [t for t in status.header.trace if t.event != CARRY_KEY]
    trace.append(TraceEntry(at=status.body.at, event=CARRY_KEY, detail=text))
    return status.model_copy(update={"header": status.header.model_copy(update={"trace": trace})})


class HubTransport:
    """Delivery mode ``hub``: the message goes to the hub as edXML, for one recipient, signed
    with the gateway's key when ``sign`` is given (:mod:`gateway.signing`)."""

    def __init__(
        self, client: HubClient, store: Store | None = None, *,
        sign: Callable[[bytes], bytes] | None = None, blobs: BlobStore | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.sign = sign
        self.blobs = blobs

    async def send(self, agency: Agency, delivery: Delivery) -> None:
        try:
            envelope = decode(delivery.body)
        except GatewayError as exc:
            raise PermanentFailure(f"not a canonical envelope: {exc.detail}") from exc
        if isinstance(envelope, DocumentEnvelope):
            message_type = "edoc"
        elif isinstance(envelope, StatusEnvelope):
            message_type = "status"
            envelope = await self._answering(envelope)
        else:
            raise PermanentFailure(
                f"the central hub carries documents and statuses, not a {envelope.kind}"
            )
        package: bytes | StreamedBody
        try:
            if self.blobs is not None and stored_attachments(envelope):
                package = await self._large(envelope, self.blobs)
            else:
                package = encode_edxml(envelope)
                if self.sign is not None:
                    package = self.sign(package)
        except GatewayError as exc:
            raise PermanentFailure(f"cannot write this message as edXML: {exc.detail}") from exc
        doc_ids = await self.client.send_edoc(
            package, message_type=message_type, message_id=delivery.message_id, to=[agency.code]
        )
        log.info("hub.sent", message_id=delivery.message_id, recipient=agency.code,
                 message_type=message_type, doc_ids=doc_ids)

    async def _large(self, envelope: AnyEnvelope, blobs: BlobStore) -> bytes | StreamedBody:
        """A package whose files are in the blob store. Unsigned, it is streamed twice from
        the store (once for the request signature's digest and length, once as the body), so
        memory does not grow with the files. Signed with our key, it is built whole in a
        worker thread: an enveloped XML-DSig signature digests the whole document."""
        stored_files_exist(envelope, blobs)
        chunks = blobs.chunks
        if self.sign is not None:
            sign = self.sign
            return await asyncio.to_thread(
                lambda: sign(b"".join(iter_edxml(envelope, chunks))))

        def measure() -> tuple[str, int]:
            digest, length = hashlib.sha256(), 0
            for piece in iter_edxml(envelope, chunks):
                digest.update(piece)
                length += len(piece)
            return digest.hexdigest(), length

        sha256, length = await asyncio.to_thread(measure)
        return StreamedBody(sha256, length, lambda: pieces_of(envelope, blobs))

    async def _answering(self, status: StatusEnvelope) -> StatusEnvelope:
        if self.store is None:
            return status
        try:
            row = await self.store.message(str(status.body.about))
        except NotFound:
            return status
        original = decode(row.envelope)
        if not isinstance(original, DocumentEnvelope):
            return status
        return answering(status, document_id(original))


def hub_transport(app: web.Application, http: aiohttp.ClientSession) -> HubTransport | None:
    """The delivery worker's transport for mode ``hub``; None when no hub is configured."""
    settings = app[SETTINGS]
    if not settings.hub_url:
        return None
    client = HubClient.from_settings(settings, http)
    sign = app[SIGNER].sign if SIGNER in app else None
    return HubTransport(client, app[STORE], sign=sign, blobs=app.get(BLOBS))


# -- inbound ----------------------------------------------------------------------------------
@dataclass
class PollResult:
    """What one poll did, by hub document id."""

    admitted: list[str] = field(default_factory=list)  # admitted (or found admitted): done
    refused: dict[str, str] = field(default_factory=dict)  # doc id -> reason: marked fail
    deferred: list[str] = field(default_factory=list)  # left listed for the next poll


def _reason(exc: GatewayError) -> str:
    parts = [f"{exc.title}: {exc.detail}"]
    parts += [f"{e.pointer}: {e.detail}" for e in exc.errors]
    return "; ".join(parts)[:_REASON_LIMIT]


class HubPoller:
    """Takes what the hub holds for our agencies into the gateway (see the module docstring).
    Several pollers (several gateway processes) may poll at once."""

    def __init__(
        self,
        app: web.Application,
        client: HubClient,
        *,
        interval: float,
        check: Check | None = None,
    ) -> None:
        self.app = app
        self.client = client
        self.interval = interval
        self.check = check

    async def run(self) -> None:
        """Poll until cancelled; a failed poll is logged and the next one comes on time."""
        while True:
            try:
                await self.poll_once()
            except PermanentFailure as exc:  # e.g. a wrong secret: an operator must act
                log.error("hub.poll_refused", error=exc.detail)
            except RetryLater as exc:
                log.warning("hub.poll_failed", error=exc.detail)
            except Exception:  # a bug must not stop the bridge; it is logged with its trace
                log.exception("hub.poll_crashed")
            await asyncio.sleep(self.interval)

    async def poll_once(self) -> PollResult:
        return await self.take(await self.client.received())

    async def take(self, docs: Sequence[ReceivedDoc]) -> PollResult:
        """Fetch, admit and mark each listed document, in the hub's order (a status after the
        document it is about)."""
        result = PollResult()
        for doc in docs:
            await self._take(doc, result)
        return result

    async def _take(self, doc: ReceivedDoc, result: PollResult) -> None:
        bound = log.bind(doc_id=doc.doc_id, hub_sender=doc.sender, hub_to=doc.to)
        try:
            package = await self.client.get_edoc(doc.doc_id)
        except DeliveryError as exc:
            bound.warning("hub.fetch_failed", error=exc.detail)
            result.deferred.append(doc.doc_id)
            return
        except TooLarge as exc:  # fetched again, it would be as large: refused for good
            await self._refuse(doc, None, exc, result, bound)
            return
        try:
            accepted = await self._admit(doc, package)
        except DeliveryError as exc:
            bound.warning("hub.admit_deferred", error=exc.detail)
            result.deferred.append(doc.doc_id)
            return
        except GatewayError as exc:
            await self._refuse(doc, package, exc, result, bound)
            return
        except Exception:
            # A bug, not a verdict on the package: keep it listed, and let the others through.
            bound.exception("hub.admit_crashed")
            result.deferred.append(doc.doc_id)
            return
        bound.info("hub.package_admitted", message_id=accepted.message_id,
                   fresh=accepted.created)
        if await self._mark(doc, "done", bound):
            result.admitted.append(doc.doc_id)
        else:
            result.deferred.append(doc.doc_id)

    async def _refuse(
        self, doc: ReceivedDoc, package: bytes | None, exc: GatewayError, result: PollResult,
        bound: Any,
    ) -> None:
        """The gateway said no: for good (mark it ``fail``), or for now (a 5xx: our store or
        broker is away; leave it listed for the next poll)."""
        if exc.status >= 500:
            bound.warning("hub.admit_deferred", error=exc.detail)
            result.deferred.append(doc.doc_id)
            return
        reason = _reason(exc)
        # Never the package itself: it may hold personal data.
        bound.error("hub.package_refused", reason=reason,
                    sha256=hashlib.sha256(package).hexdigest() if package is not None else None)
        if await self._mark(doc, "fail", bound, reason=reason, problem=exc.problem()):
            result.refused[doc.doc_id] = reason
        else:
            result.deferred.append(doc.doc_id)

    async def _mark(
        self, doc: ReceivedDoc, status: str, bound: Any, *, reason: str | None = None,
        problem: Mapping[str, Any] | None = None,
    ) -> bool:
        try:
            await self.client.update_status(doc.doc_id, status, reason=reason, problem=problem)
        except DeliveryError as exc:
            # Still listed: the next poll fetches it again and admission finds it admitted.
            bound.warning("hub.mark_failed", status=status, error=exc.detail)
            return False
        return True

    async def _admit(self, doc: ReceivedDoc, package: bytes) -> Accepted:
        blobs = self.app.get(BLOBS)
        if blobs is None or len(package) <= STREAM_ABOVE:
            return await self._admit_decoded(doc, package, decode_edxml(package), frozenset())
        # Files above the inline limit go to the blob store, as for a package sent to our API.
        spooled, new = await asyncio.to_thread(
            spool_package, blobs, io.BytesIO(package), STREAM_LIMITS)
        try:
            envelope = decode_edxml(spooled.skeleton, claims=spooled.claims)
            return await self._admit_decoded(
                doc, package, envelope, frozenset(a.sha256 for a in spooled.attachments))
        except GatewayError:
            await asyncio.to_thread(blobs.remove, new)
            raise

    async def _admit_decoded(self, doc: ReceivedDoc, package: bytes, envelope: AnyEnvelope,
                             stored: frozenset[str]) -> Accepted:
        sender = envelope.header.sender
        directory = self.app[DIRECTORY]
        agency = directory.agencies.get(sender)
        if agency is None or agency.mode is not DeliveryMode.HUB:
            why = ("is not in the directory" if agency is None
                   else f"is reached by {agency.mode.value}, not through the hub")
            raise Forbidden(
                f"the hub cannot speak for {sender}: it {why}",
                errors=[FieldError(SENDER_AT, "not an agency behind the central hub")],
            )
        ours = self._for_us(await self._matched(envelope, package), doc.to)
        return await admit(
            self.app, agency=sender, body=package, decoder=lambda _data: ours,
            sender_at=SENDER_AT, idempotency_key="hub:" + hashlib.sha256(package).hexdigest(),
            check=self.check, via="hub", stored=stored,
        )

    async def _matched(self, envelope: AnyEnvelope, package: bytes) -> AnyEnvelope:
        """A status names the document it answers by the DocumentId the document travelled
        with (``ResponseFor/DocumentId``); the codec maps that to the message id derived from
        it. A document whose sender chose its DocumentId has another message id, so when no
        message has the derived one, the status is about the newest version of the document
        its addressee (our agency, ``ResponseFor/OrganId``) sent under that DocumentId to the
        status's sender. Unmatched, it stays as it is and the ingress refuses it."""
        if not isinstance(envelope, StatusEnvelope) or not envelope.header.to:
            return envelope
        store = self.app[STORE]
        try:
            await store.message(str(envelope.body.about))
            return envelope
        except NotFound:
            pass
        found = xmlsafe.parse(package).xpath(_RESPONSE_FOR_ID)
        key = str(found[0]).strip() if isinstance(found, list) and found else ""
        addressee = envelope.header.to[0]
        if not key or not isinstance(addressee, AgencyAddress):
            return envelope
        versions = await store.versions(addressee.agency, key)
        for version in reversed(versions):  # newest first
            if version.relation != "self":
                continue
            row = await store.message(version.message_id)
            if envelope.header.sender in {r.agency for r in row.recipients}:
                body = envelope.body.model_copy(update={"about": uuid.UUID(row.id)})
                return envelope.model_copy(update={"body": body})
        return envelope

    def _for_us(self, envelope: AnyEnvelope, hub_to: str) -> AnyEnvelope:
        """The envelope addressed to the agencies of its ``To`` that this gateway serves (other
        provinces' agencies are not in our directory; hub agencies had it from the hub)."""
        directory = self.app[DIRECTORY]

        def served(code: str) -> bool:
            agency = directory.agencies.get(code)
            return agency is not None and agency.mode is not DeliveryMode.HUB

        if not served(hub_to):
            raise UnprocessableRequest(
                f"the hub delivered to {hub_to}, which this gateway does not serve",
                errors=[FieldError(TO_AT, f"{hub_to} is not served by this gateway")],
            )
        kept = [a for a in envelope.header.to
                if isinstance(a, AgencyAddress) and served(a.agency)]
        if hub_to not in {a.agency for a in kept}:
            kept.insert(0, AgencyAddress(agency=hub_to))
        if kept == envelope.header.to:
            return envelope
        header = envelope.header.model_copy(update={"to": kept})
        return envelope.model_copy(update={"header": header})


HUB_POLLER = web.AppKey("hub_poller", HubPoller)


async def hub_poller_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: poll the hub while the app runs (only when ``hub_url`` is set)."""
    settings = app[SETTINGS]
    if not settings.hub_url:
        yield
        return
    timeout = aiohttp.ClientTimeout(total=settings.push_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # Signatures are checked as for any edXML that enters (None: not configured).
        poller = HubPoller(app, HubClient.from_settings(settings, session),
                           interval=settings.hub_poll_interval, check=edxml_check(app))
        app[HUB_POLLER] = poller
        task = asyncio.create_task(poller.run(), name="hub-poller")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


#: Outbound: mode ``hub`` with LIENTHONG_HUB_URL; inbound: the poller. Both speak edXML.
ADAPTER = Adapter(name="central_hub", codec=EDXML, mode=DeliveryMode.HUB,
                  transport=hub_transport, background=hub_poller_ctx)
