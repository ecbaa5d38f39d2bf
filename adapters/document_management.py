"""Document-management systems (QLVB&ĐH) speaking edXML (QCVN 102:2016) over HTTP.

* ``POST /api/v1/edxml/messages``: send one edXML package (document or status); the answer is
  the same ``202`` as for JSON. The package's DocumentId is its message id, so sending the same
  package twice creates one message. Its digital signature (chữ ký số) is checked against the
  sender's policy first (:func:`gateway.signing.edxml_check`): a refusal is a 422 whose problem
  document names the reason (``signature.reason``), and stores nothing; an accepted package
  carries the outcome in its trace.
* ``GET /api/v1/edxml/messages/{id}``: a message the agency sent or received, as edXML, signed
  with the gateway's key when it has one.
* ``GET /api/v1/edxml/inbox``: the calling agency's inbox (hộp thư đến) as a JSON page of
  ``{seq, message_id, kind, sender, received_at, links}``, paged exactly like
  ``/api/v1/inbox`` (``after``, ``limit``, ``unread``). A document-management system polls it,
  fetches each package from ``links.edxml`` and acknowledges with ``links.ack``. A page of
  links, not a page of packages: each package stays one plain ``application/xml`` document with
  its own signature, which is what these systems already import, and a page stays small
  whatever the attachments weigh (a multipart page would be neither).

Agencies whose directory entry says ``format: edxml`` get their pushes as edXML too, signed the
same way (:func:`gateway.delivery.wire_body`).

As an adapter (:data:`ADAPTER`, :mod:`adapters.base`) this one is ingress and fetch only: the
edXML codec and the routes above, no transport. Pushes, edXML or JSON, are the core's
:class:`~gateway.delivery.HttpPush`: the worker picks a transport by delivery mode, and one
``push`` endpoint takes either format (the directory entry's ``format``), so an edXML push
transport here would have to serve JSON pushes too, or split a mode the directory keeps whole.

Large files (claim check). A package over :data:`STREAM_ABOVE` bytes is never read into
memory: it is spooled to disk as it arrives (up to ``LIENTHONG_MAX_PACKAGE_BYTES``), then read
once by :func:`gateway.codecs.edxml.spool_edxml`, which decodes each attachment's base64 piece
by piece into the blob store (:mod:`gateway.blobs`) and keeps the rest as a small skeleton.
The message then carries each such file as a claim check (size and SHA-256). Going out, a
package with stored files is written by :func:`gateway.codecs.edxml.iter_edxml`, the files'
base64 streamed from the store, so the recipient gets the files themselves; JSON systems fetch
them from ``GET /api/v1/messages/{id}/attachments/{n}``. A signed package of this size is
verified whole, once, in a worker thread (XML-DSig's enveloped signature digests the whole
document); a streamed package going out is not signed by the gateway, for the same reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from collections.abc import Sequence
from typing import IO, Any

import orjson
from aiohttp import web

from adapters.base import Adapter
from gateway import signing  # a module: SIGNER, edxml_check and sign_outgoing
from gateway.api.keys import AGENCY, BLOBS, SETTINGS
from gateway.api.routes import inbox_page, ingest, receive_bounded, visible_message
from gateway.blobs import STREAM_ABOVE, spool_package
from gateway.codecs import decode, decode_edxml, encode_edxml
from gateway.codecs.edxml import STREAM_LIMITS, Spooled, stored_attachments
from gateway.codecs.xmlsafe import XmlLimits
from gateway.delivery import pieces_of
from gateway.envelope import AnyEnvelope
from gateway.errors import GatewayError
from gateway.ingress import AuditNote, Check
from gateway.store.store import InboxEntry

routes = web.RouteTableDef()


class EdxmlCodec:
    media_type = "application/xml"

    def decode(self, data: bytes) -> AnyEnvelope:
        return decode_edxml(data)

    def encode(self, envelope: AnyEnvelope) -> bytes:
        return encode_edxml(envelope)


EDXML = EdxmlCodec()


SENDER_AT = "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/From/OrganId"


@routes.post("/api/v1/edxml/messages")
async def post_edxml(request: web.Request) -> web.Response:
    """Accept one edXML package from the calling agency's document-management system."""
    length = request.content_length
    if length is not None and length <= STREAM_ABOVE:
        return await ingest(request, EDXML.decode, sender_at=SENDER_AT,
                            check=signing.edxml_check(request.app))
    return await _post_streamed(request)


async def _post_streamed(request: web.Request) -> web.Response:
    """A large package: spooled to disk, its files streamed into the blob store, the rest
    admitted like any package. Refused: the files it stored are removed again (unless
    another message already had them), and nothing else was written."""
    app = request.app
    blobs, limit = app[BLOBS], app[SETTINGS].max_package_bytes
    limits = XmlLimits(max_bytes=limit, max_text=STREAM_LIMITS.max_text)
    with tempfile.TemporaryFile(dir=blobs.root / "tmp", suffix=".edxml") as spool:
        await receive_bounded(request, limit, spool.write)
        spool.seek(0)
        spooled, new = await asyncio.to_thread(spool_package, blobs, spool, limits)
        claims = spooled.claims
        try:
            check = await _streamed_check(app, request[AGENCY], spool, spooled, limits)
            return await ingest(
                request, lambda b: decode_edxml(b, claims=claims), sender_at=SENDER_AT,
                check=check, body=spooled.skeleton,
                stored=frozenset(a.sha256 for a in spooled.attachments),
            )
        except (GatewayError, web.HTTPException):
            # Refused: nothing refers to the files it brought. (Anything else, e.g. a crash
            # after the commit, keeps them: an orphan file costs disk, a lost one a document.)
            await asyncio.to_thread(blobs.remove, new)
            raise


async def _streamed_check(
    app: web.Application, agency: str, spool: IO[bytes], spooled: Spooled, limits: XmlLimits
) -> Check | None:
    """The signature check of a streamed package, done before admitting it, in a worker
    thread and on the whole package (the enveloped signature digests all of it)."""
    # The attachments' base64 is one text node each: whole here, up to the package limit.
    full_check = signing.edxml_check(app, dataclasses.replace(limits, max_text=limits.max_bytes))
    if full_check is None:
        return None
    envelope = decode_edxml(spooled.skeleton, claims=spooled.claims)
    if envelope.header.sender != agency:
        return None  # admit refuses it (403) without the cost of a verification

    def verify() -> tuple[AnyEnvelope, Sequence[AuditNote]]:
        spool.seek(0)
        return full_check(spool.read(), envelope)

    checked = await asyncio.to_thread(verify)
    return lambda _body, _envelope: checked


def _package(request: web.Request, envelope: bytes) -> web.Response:
    body = signing.sign_outgoing(request.app.get(signing.SIGNER), EDXML.encode(decode(envelope)))
    return web.Response(body=body, content_type=EDXML.media_type, charset="utf-8")


@routes.get("/api/v1/edxml/messages/{id}")
async def get_edxml(request: web.Request) -> web.StreamResponse:
    """A message as an edXML package, for its sender or one of its recipients; its stored
    files streamed in from the blob store."""
    _agency, row = await visible_message(request)
    envelope = decode(row.envelope)
    stored = stored_attachments(envelope)
    if not stored:
        return _package(request, row.envelope)
    blobs = request.app[BLOBS]
    for att in stored:  # before the first byte goes out: a missing file is a clean 404
        blobs.size(att.sha256)
    response = web.StreamResponse(headers={"Content-Type": "application/xml; charset=utf-8"})
    await response.prepare(request)
    async for piece in pieces_of(envelope, blobs):
        await response.write(piece)
    await response.write_eof()
    return response


def _inbox_item(entry: InboxEntry) -> dict[str, Any]:
    # kind and sender let the system sort its list before fetching anything.
    envelope = orjson.loads(entry.envelope)
    item: dict[str, Any] = {
        "seq": entry.seq,
        "message_id": entry.message_id,
        "kind": envelope["kind"],
        "sender": envelope["header"]["sender"],
        "received_at": entry.received_at,
        "links": {
            "edxml": f"/api/v1/edxml/messages/{entry.message_id}",
            "ack": f"/api/v1/inbox/{entry.message_id}/ack",
        },
    }
    if entry.acked_at is not None:
        item["acked_at"] = entry.acked_at
    return item


@routes.get("/api/v1/edxml/inbox")
async def get_edxml_inbox(request: web.Request) -> web.Response:
    """The calling agency's inbox as links to edXML packages, oldest first, paged by
    ``after`` (the last ``seq`` seen), with the rules of ``GET /api/v1/inbox``."""
    return await inbox_page(request, _inbox_item)


ADAPTER = Adapter(name="document_management", codec=EDXML, routes=routes)
