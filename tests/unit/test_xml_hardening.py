"""Hostile XML is refused fast, with a clear error, and nothing is returned; large attachments
stream through in flat memory."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.codecs import xmlsafe
from gateway.codecs.edxml import (
    STREAM_LIMITS,
    StreamedAttachment,
    decode_edxml,
    iter_attachments,
)
from gateway.codecs.xmlsafe import XmlLimits
from gateway.errors import CodecError, MalformedInput, SchemaViolation

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "edxml" / "samples"
NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
ROOT_OPEN = f'<?xml version="1.0" encoding="UTF-8"?>\n<edXML xmlns="{NS}">'.encode()

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016"><Subject>&lol9;</Subject></edXML>
"""


def _external(uri: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<!DOCTYPE edXML [<!ENTITY xxe SYSTEM "{uri}">]>\n'
        f'<edXML xmlns="{NS}"><edXMLEnvelope><edXMLHeader><MessageHeader>'
        "<Subject>&xxe;</Subject></MessageHeader></edXMLHeader></edXMLEnvelope></edXML>"
    ).encode()


HOSTILE: dict[str, tuple[bytes, str]] = {
    "billion laughs": (BILLION_LAUGHS, "DOCTYPE"),
    "external entity file": (_external("file:///etc/passwd"), "DOCTYPE"),
    "external entity http": (_external("http://127.0.0.1:9/evil.dtd"), "DOCTYPE"),
    "parameter entity": (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><x/>',
        "DOCTYPE",
    ),
    "external dtd": (
        b'<!DOCTYPE edXML SYSTEM "http://127.0.0.1:9/edxml.dtd"><edXML/>',
        "DOCTYPE",
    ),
    "doctype after a comment": (b"<!-- hi --><!DOCTYPE x><x/>", "DOCTYPE"),
    "10 MB text node": (
        ROOT_OPEN + b"<Subject>" + b"A" * 10_000_000 + b"</Subject></edXML>",
        "text node",
    ),
    "deep nesting": (ROOT_OPEN + b"<x>" * 200 + b"</x>" * 200 + b"</edXML>", "deeper"),
    "very deep nesting": (b"<x>" * 100_000 + b"</x>" * 100_000, "depth"),
    "huge attribute": (ROOT_OPEN + b'<x a="' + b"B" * 1_000_000 + b'"/></edXML>', "attribute"),
    "too large": (ROOT_OPEN + b"<x/>" * 5_000_000 + b"</edXML>", "bytes"),
    "too many elements": (ROOT_OPEN + b"<x/>" * 60_000 + b"</edXML>", "elements"),
    "utf-16": ("<edXML/>".encode("utf-16"), "UTF-8"),
    "undefined entity": (ROOT_OPEN + b"<Subject>&xxe;</Subject></edXML>", "xxe"),
}


def _refused(parse: Callable[[], object], expected: str) -> CodecError:
    started = time.perf_counter()
    with pytest.raises(MalformedInput) as info:
        result = parse()
        pytest.fail(f"hostile XML was accepted: {result!r}"[:200])
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"refused, but only after {elapsed:.2f} s"
    exc = info.value
    assert exc.status == 400
    assert expected.lower() in exc.detail.lower(), exc.detail
    assert exc.errors, "the error names where"
    return exc


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_xml_is_refused_fast_by_the_codec(name: str) -> None:
    data, expected = HOSTILE[name]
    _refused(lambda: decode_edxml(data), expected)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_xml_is_refused_fast_by_the_streaming_path(name: str) -> None:
    data, expected = HOSTILE[name]
    if name in {"too large", "very deep nesting", "undefined entity", "too many elements"}:
        expected = ""  # the streaming parser has its own words (and a 4 GB size limit)
    limits = XmlLimits(max_bytes=STREAM_LIMITS.max_bytes, max_elements=50_000)
    opened: list[int] = []

    def sink(index: int) -> io.BytesIO:
        opened.append(index)
        return io.BytesIO()

    _refused(lambda: list(iter_attachments(io.BytesIO(data), sink, limits=limits)), expected)
    assert opened == []


def test_the_doctype_error_names_its_line() -> None:
    exc = _refused(lambda: xmlsafe.parse(_external("file:///etc/passwd")), "DOCTYPE")
    assert exc.errors[0].detail.startswith("line 2:")


def test_the_text_node_error_names_the_element() -> None:
    exc = _refused(lambda: decode_edxml(HOSTILE["10 MB text node"][0]), "text node")
    assert exc.errors[0].pointer in {"", "/edXML/Subject"}


def test_limits_are_configurable() -> None:
    data = ROOT_OPEN + b"<a><b><c/></b></a></edXML>"
    assert xmlsafe.parse(data).tag == f"{{{NS}}}edXML"
    exc = _refused(lambda: xmlsafe.parse(data, XmlLimits(max_depth=3)), "deeper than 3")
    assert exc.errors[0].pointer == "/edXML/a/b/c"
    _refused(lambda: xmlsafe.parse(data, XmlLimits(max_bytes=20)), "bytes")
    _refused(lambda: xmlsafe.parse(b'<a x="12345"/>', XmlLimits(max_attribute_length=4)), "attr")
    _refused(lambda: xmlsafe.parse(b"<a>12345</a>", XmlLimits(max_text=4)), "text node")
    _refused(lambda: xmlsafe.parse(b"<a><b/><b/></a>", XmlLimits(max_elements=2)), "elements")


def test_comments_and_processing_instructions_are_dropped() -> None:
    root = xmlsafe.parse(b"<?xml version='1.0'?><!-- c --><a><?pi x?><!-- d --><b/></a>")
    assert [child.tag for child in root] == ["b"]


def test_nothing_is_fetched_for_xinclude_or_schema_locations() -> None:
    data = (
        b'<a xmlns:xi="http://www.w3.org/2001/XInclude" '
        b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        b'xsi:schemaLocation="urn:x http://127.0.0.1:9/x.xsd">'
        b'<xi:include href="file:///etc/passwd" parse="text"/></a>'
    )
    root = xmlsafe.parse(data)
    assert b"root:" not in xmlsafe.etree.tostring(root)  # the include stays an element


# -- streaming large attachments ---------------------------------------------------------
class _HashingSink:
    """Keeps nothing: counts and hashes what it is given."""

    def __init__(self) -> None:
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.size += len(data)
        self.hash.update(data)
        return len(data)


def _package(attachments: list[bytes], line: int = 0) -> bytes:
    parts = [
        ROOT_OPEN,
        b"<edXMLEnvelope><edXMLHeader><MessageHeader/></edXMLHeader></edXMLEnvelope>",
        b"<AttachmentEncoded>",
    ]
    for i, raw in enumerate(attachments):
        encoded = base64.b64encode(raw)
        if line:
            encoded = b"\r\n".join(encoded[j : j + line] for j in range(0, len(encoded), line))
        parts += [
            b"<Attachment>",
            f"<ContentId>cid:{i + 1}</ContentId><AttachmentName>f{i}.pdf</AttachmentName>".encode(),
            b"<ContentTransferEncoded>",
            encoded,
            b"</ContentTransferEncoded><ContentType>application/pdf</ContentType></Attachment>",
        ]
    parts.append(b"</AttachmentEncoded></edXML>")
    return b"".join(parts)


def test_a_20_mb_package_streams_in_flat_memory() -> None:
    raw = os.urandom(15 * 1024 * 1024)  # 15 MiB of bytes: a 20 MiB base64 text node
    data = _package([raw])
    assert len(data) > 20_000_000
    stream = io.BytesIO(data)
    sinks: list[_HashingSink] = []

    def open_sink(index: int) -> _HashingSink:
        sinks.append(_HashingSink())
        return sinks[-1]

    tracemalloc.start()
    try:
        done = list(iter_attachments(stream, open_sink))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(raw) / 20, f"peak {peak} bytes for a {len(raw)} byte attachment"
    assert [(a.index, a.content_id, a.name, a.media_type) for a in done] == [
        (0, "cid:1", "f0.pdf", "application/pdf")
    ]
    assert done[0].size == len(raw) == sinks[0].size
    assert done[0].sha256 == hashlib.sha256(raw).hexdigest() == sinks[0].hash.hexdigest()


def test_streaming_yields_each_attachment_as_it_completes() -> None:
    files = [os.urandom(n) for n in (0, 1, 2, 3, 100_000, 70_001)]
    data = _package(files, line=76)  # MIME-style line breaks inside the base64
    sinks: dict[int, io.BytesIO] = {}

    def open_sink(index: int) -> io.BytesIO:
        sinks[index] = io.BytesIO()
        return sinks[index]

    seen: list[StreamedAttachment] = []
    for attachment in iter_attachments(_Chunked(data, 1000), open_sink, chunk_size=1000):
        seen.append(attachment)
        assert sinks[attachment.index].getvalue() == files[attachment.index]  # complete already
    assert [a.size for a in seen] == [len(f) for f in files]


def test_streamed_sample_agrees_with_the_codec() -> None:
    data = (SAMPLES / "edoc_update.edxml").read_bytes()
    sink = _HashingSink()
    [streamed] = iter_attachments(io.BytesIO(data), lambda _: sink)
    [decoded] = decode_edxml(data).body.attachments  # type: ignore[union-attr]
    assert (streamed.sha256, streamed.size) == (decoded.sha256, decoded.size)


def test_bad_base64_in_a_stream_is_refused() -> None:
    data = _package([b"hello"]).replace(base64.b64encode(b"hello"), b"aGVsbG8=aGVsbG8=")
    with pytest.raises(SchemaViolation, match="base64"):
        list(iter_attachments(io.BytesIO(data), lambda _: io.BytesIO()))
    data = _package([b"hello"]).replace(base64.b64encode(b"hello"), b"${__StringFromFile()}")
    with pytest.raises(SchemaViolation, match="base64"):
        list(iter_attachments(io.BytesIO(data), lambda _: io.BytesIO()))


class _Chunked(io.RawIOBase):
    """A stream that hands out at most ``size`` bytes at a time, like a socket."""

    def __init__(self, data: bytes, size: int) -> None:
        self._chunks: Iterator[bytes] = (data[i : i + size] for i in range(0, len(data), size))

    def read(self, size: int = -1) -> bytes:
        return next(self._chunks, b"")
