"""Codecs: pure function pairs between a wire format and the Envelope."""

from gateway.codecs.canonical import decode, decode_obj, encode, pointer_for
from gateway.codecs.edxml import decode_edxml, encode_edxml, iter_attachments

__all__ = [
    "decode",
    "decode_edxml",
    "decode_obj",
    "encode",
    "encode_edxml",
    "iter_attachments",
    "pointer_for",
]
