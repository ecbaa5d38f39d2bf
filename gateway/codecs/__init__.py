"""Codecs: pure function pairs between a wire format and the Envelope."""

from gateway.codecs.canonical import decode, decode_obj, encode, pointer_for

__all__ = ["decode", "decode_obj", "encode", "pointer_for"]
