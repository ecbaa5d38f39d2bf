"""Document-management systems (QLVB&ĐH) speaking edXML (QCVN 102:2016) over HTTP.

* ``POST /api/v1/edxml/messages``: send one edXML package (document or status); the answer is
  the same ``202`` as for JSON. The package's DocumentId is its message id, so sending the same
  package twice creates one message.
* ``GET /api/v1/edxml/messages/{id}``: a message the agency sent or received, as edXML.

Agencies whose directory entry says ``format: edxml`` get their pushes as edXML too
(:func:`gateway.delivery.push` asks :data:`EDXML` to translate).
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.routes import ingest, visible_message
from gateway.codecs import decode, decode_edxml, encode_edxml
from gateway.envelope import AnyEnvelope

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
                        sender_at="/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/From/OrganId")


@routes.get("/api/v1/edxml/messages/{id}")
async def get_edxml(request: web.Request) -> web.Response:
    """A message as an edXML package, for its sender or one of its recipients."""
    _agency, row = await visible_message(request)
    return web.Response(body=EDXML.encode(decode(row.envelope)),
                        content_type=EDXML.media_type, charset="utf-8")
