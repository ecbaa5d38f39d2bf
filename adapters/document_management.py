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
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway import signing  # a module: gateway.signing imports the API, which imports us
from gateway.api.routes import inbox_page, ingest, visible_message
from gateway.codecs import decode, decode_edxml, encode_edxml
from gateway.envelope import AnyEnvelope
from gateway.store.store import InboxEntry

routes = web.RouteTableDef()


class EdxmlCodec:
    media_type = "application/xml"

    def decode(self, data: bytes) -> AnyEnvelope:
        return decode_edxml(data)

    def encode(self, envelope: AnyEnvelope) -> bytes:
        return encode_edxml(envelope)


EDXML = EdxmlCodec()


@routes.post("/api/v1/edxml/messages")
async def post_edxml(request: web.Request) -> web.Response:
    """Accept one edXML package from the calling agency's document-management system."""
    return await ingest(request, EDXML.decode,
                        sender_at="/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/From/OrganId",
                        check=signing.edxml_check(request.app))


def _package(request: web.Request, envelope: bytes) -> web.Response:
    body = signing.sign_outgoing(request.app.get(signing.SIGNER), EDXML.encode(decode(envelope)))
    return web.Response(body=body, content_type=EDXML.media_type, charset="utf-8")


@routes.get("/api/v1/edxml/messages/{id}")
async def get_edxml(request: web.Request) -> web.Response:
    """A message as an edXML package, for its sender or one of its recipients."""
    _agency, row = await visible_message(request)
    return _package(request, row.envelope)


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
