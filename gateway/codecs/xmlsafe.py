"""Hardened XML parsing: every byte of XML that enters the gateway goes through here.

Pure: bytes in, an lxml tree (or an error) out. The rules, all enforced before or while parsing,
each refused with :class:`~gateway.errors.MalformedInput` naming the line and, where there is
one, the element path:

- no DTD at all: a ``<!DOCTYPE`` in the prolog is refused before the parser sees a byte, so no
  entity is ever declared (billion laughs, quadratic blow-up, external entities ``SYSTEM
  "file:///etc/passwd"`` or ``"http://..."``); the parser is also built with
  ``resolve_entities=False, load_dtd=False, no_network=True, dtd_validation=False`` and the
  parsed tree is checked for a DTD once more (belt and braces);
- UTF-8 (or another ASCII-compatible encoding it declares); UTF-16/32 are refused, so the
  prolog check cannot be sidestepped by an encoding it does not read;
- limits (:class:`XmlLimits`): total size (checked first, in O(1)), element depth, element
  count, attribute value length and the length of any single text node. libxml2's own limits
  (``huge_tree=False``: depth 256, text node 10,000,000 bytes) stay on underneath;
- comments and processing instructions are dropped (they carry no data).

The streaming path (:class:`StreamGuard` with an lxml parser *target*) applies the same rules
to a document fed in chunks, for packages too large to hold in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lxml import etree

from gateway.errors import FieldError, MalformedInput

__all__ = [
    "DEFAULT_LIMITS",
    "StreamGuard",
    "XmlLimits",
    "check_prolog",
    "element_path",
    "local_name",
    "parse",
    "safe_parser",
]

_MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class XmlLimits:
    """Bounds on one XML document. The defaults suit edXML packages parsed in memory."""

    max_bytes: int = 16 * _MiB  # the whole document
    max_depth: int = 48  # edXML needs 9; vendor extensions get room
    max_elements: int = 50_000
    max_attribute_length: int = 4096
    max_text: int = 8 * _MiB  # one text node; a larger attachment takes the streaming path


DEFAULT_LIMITS = XmlLimits()

_local = threading.local()


def safe_parser(
    *, recover: bool = False, target: Any = None, keep_comments: bool = False,
    drop_blank_text: bool = False,
) -> etree.XMLParser:
    """An lxml parser that never resolves entities, loads a DTD or touches the network.
    ``keep_comments`` keeps comments and PIs (a signature's C14N may cover them);
    ``drop_blank_text`` drops whitespace-only text between elements (a codec that strips
    whitespace anyway saves building those nodes; never for a signature, whose digest covers
    them)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=not keep_comments,
        remove_pis=not keep_comments,
        remove_blank_text=drop_blank_text,
        collect_ids=False,
        recover=recover,
        target=target,
    )


def _cached_parser(recover: bool, drop_blank_text: bool = False) -> etree.XMLParser:
    # Parsers are not thread-safe but are reusable within one thread: one per thread and mode.
    key = ("recover" if recover else "strict") + ("-compact" if drop_blank_text else "")
    parser: etree.XMLParser | None = getattr(_local, key, None)
    if parser is None:
        parser = safe_parser(recover=recover, drop_blank_text=drop_blank_text)
        setattr(_local, key, parser)
    return parser


def _refuse(detail: str, *, line: int | None = None, path: str = "") -> MalformedInput:
    where = f"line {line}: " if line is not None else ""
    return MalformedInput(
        f"refused XML: {where}{detail}", errors=[FieldError(path, where + detail)]
    )


def check_input(data: object, limits: XmlLimits) -> bytes:
    """What every parse checks before the parser sees a byte: bytes, within the size limit,
    not empty, and a prolog without DOCTYPE or UTF-16/32. Returns the bytes."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _refuse("XML must be given as bytes")
    data = bytes(data)
    if len(data) > limits.max_bytes:
        raise _refuse(f"{len(data)} bytes, more than the limit of {limits.max_bytes}")
    if not data or data.isspace():  # what `not data.strip()` says, without copying the data
        raise MalformedInput(
            "not well-formed XML: the document is empty",
            errors=[FieldError("", "line 1: the document is empty")],
        )
    check_prolog(data)
    return data


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def check_prolog(data: bytes) -> None:
    """Refuse UTF-16/32 input and any DOCTYPE, reading only the prolog (linear, no regex)."""
    head = data[:4]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        raise _refuse("only UTF-8 XML is accepted (UTF-16/32 byte order mark or NUL found)")
    pos = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    end = len(data)
    while pos < end:
        byte = data[pos]
        if byte in b" \t\r\n":
            pos += 1
        elif data.startswith(b"<?", pos):
            close = data.find(b"?>", pos + 2)
            if close < 0:
                return  # unterminated: the parser reports it with its line
            pos = close + 2
        elif data.startswith(b"<!--", pos):
            close = data.find(b"-->", pos + 4)
            if close < 0:
                return
            pos = close + 3
        elif data.startswith(b"<!", pos):
            # <!DOCTYPE (or any other declaration) before the root element.
            raise _refuse(
                "a DOCTYPE is not allowed (no DTDs, no entities)", line=_line_of(data, pos)
            )
        else:
            return  # the root element (or junk the parser will name)


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def element_path(element: etree._Element) -> str:
    """``/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/To[2]/OrganId``: local names, with a
    1-based position where an element has same-named siblings (as XPath would write it)."""
    parts: list[str] = []
    node: etree._Element | None = element
    while node is not None:
        tag = node.tag
        if isinstance(tag, str):
            name = local_name(tag)
            parent = node.getparent()
            if parent is not None:
                same = [c for c in parent if c.tag == tag]
                if len(same) > 1:
                    name += f"[{same.index(node) + 1}]"
            parts.append(name)
        node = node.getparent()
    return "/" + "/".join(reversed(parts))


def _open_elements_at_error(data: bytes) -> str:
    """The path of the elements open where parsing failed (error path only: a second pass)."""
    stack: list[str] = []
    pull = etree.XMLPullParser(
        events=("start", "end"), resolve_entities=False, no_network=True, load_dtd=False
    )

    def track() -> None:
        for event, element in pull.read_events():
            if event == "start" and isinstance(element, etree._Element):
                stack.append(local_name(str(element.tag)))
            elif event == "end" and stack:
                stack.pop()

    try:
        for i in range(0, len(data), 65536):
            pull.feed(data[i : i + 65536])
            track()
        pull.close()
    except etree.XMLSyntaxError:
        track()
    return "/" + "/".join(stack) if stack else ""


def syntax_error(exc: etree.XMLSyntaxError, data: bytes) -> MalformedInput:
    """Convert lxml's error into the gateway's, with line, column and element path."""
    line, column = exc.position if exc.position else (exc.lineno or 0, 0)
    message = str(exc.msg or exc).split(", line ")[0]
    path = _open_elements_at_error(data)
    detail = f"line {line}, column {column}: {message}"
    where = f" in {path}" if path else ""
    return MalformedInput(
        f"not well-formed XML at line {line}, column {column}{where}: {message}",
        errors=[FieldError(path, detail)],
    )


def _first(root: etree._Element, xpath: str, **variables: Any) -> etree._Element | None:
    """The first node an XPath selects, as its element (an attribute or text: its owner)."""
    found: Any = root.xpath(xpath, **variables)
    if not isinstance(found, list) or not found:
        return None
    node = found[0]
    if isinstance(node, etree._Element):
        return node
    owner = getattr(node, "getparent", lambda: None)()
    return owner if isinstance(owner, etree._Element) else root


def _at(element: etree._Element) -> dict[str, Any]:
    return {"line": element.sourceline, "path": element_path(element)}


def _compiled(query: str) -> etree.XPath:
    # Compiled XPath objects are reusable within a thread; one cache per thread.
    cache: dict[str, etree.XPath] | None = getattr(_local, "xpath", None)
    if cache is None:
        cache = {}
        _local.xpath = cache
    found = cache.get(query)
    if found is None:
        found = cache[query] = etree.XPath(query)
    return found


def _small_check(limits: XmlLimits) -> etree.XPath:
    """The one-pass XPath of a small document's limits (depth and attribute length), compiled
    once per thread and limits: the usual parse pays only its evaluation."""
    cache: dict[XmlLimits, etree.XPath] | None = getattr(_local, "small", None)
    if cache is None:
        cache = {}
        _local.small = cache
    found = cache.get(limits)
    if found is None:
        deep = "/*" + "/*" * limits.max_depth
        attr = f"//*/@*[string-length() > {int(limits.max_attribute_length)}]"
        found = cache[limits] = etree.XPath(f"boolean({deep} | {attr})")
    return found


def check_limits(root: etree._Element, limits: XmlLimits, size: int | None = None) -> None:
    """Depth, element count, attribute length and text size of a parsed tree, with C-speed
    XPath; a check that ``size`` (the document's bytes) already rules out is skipped."""
    small = size is not None and size <= min(limits.max_elements * 4, limits.max_text)
    if small and not _small_check(limits)(root):
        return  # one pass says there is nothing to find (the usual case, a few KB)
    deep = "/*" + "/*" * limits.max_depth
    # Attributes belong to elements: //*/@* visits fewer nodes than //@* (text nodes too).
    attr = f"//*/@*[string-length() > {int(limits.max_attribute_length)}]"
    text = f"//text()[string-length() > {int(limits.max_text)}]"
    found = _first(root, f"({deep})[1]") if _compiled(f"boolean({deep})")(root) else None
    if found is not None:
        raise _refuse(f"elements nested deeper than {limits.max_depth}", **_at(found))
    if size is None or size > limits.max_elements * 4:  # an element takes 4 bytes at least
        count: Any = _compiled("count(//*)")(root)
        if int(count) > limits.max_elements:
            raise _refuse(f"{int(count)} elements, more than the limit of {limits.max_elements}")
    if size is None or size > limits.max_attribute_length:
        if _compiled(f"boolean({attr})")(root):
            owner = _first(root, attr)
            assert owner is not None
            detail = f"an attribute value longer than {limits.max_attribute_length} characters"
            raise _refuse(detail, **_at(owner))
    if size is None or size > limits.max_text:
        if _compiled(f"boolean({text})")(root):
            owner = _first(root, text)
            assert owner is not None
            raise _refuse(f"a text node longer than {limits.max_text} characters", **_at(owner))


def _fresh_error(data: bytes) -> etree.XMLSyntaxError:
    etree.clear_error_log()  # lxml keeps the thread's errors of earlier documents too
    try:
        etree.fromstring(data, safe_parser())
    except etree.XMLSyntaxError as exc:
        return exc
    raise AssertionError("a document that failed to parse parsed")  # pragma: no cover


def parse(
    data: bytes,
    limits: XmlLimits = DEFAULT_LIMITS,
    *,
    recover_if: Callable[[etree.XMLSyntaxError], bool] | None = None,
    drop_blank_text: bool = False,
) -> etree._Element:
    """Parse ``data`` under the rules above and return the root element.

    ``recover_if`` lets a codec accept a known, documented vendor defect: when the strict parse
    fails and ``recover_if(error)`` is true, the document is parsed again in libxml2's recover
    mode (still without DTDs, entities or network) and the caller must check the result.
    ``drop_blank_text``: see :func:`safe_parser`.
    """
    data = check_input(data, limits)
    try:
        root = etree.fromstring(data, _cached_parser(False, drop_blank_text))
    except etree.XMLSyntaxError:
        # The error log also holds earlier documents' errors: clear it and parse again (the
        # error path only) so that the log is this document's alone.
        exc = _fresh_error(data)
        if recover_if is None or not recover_if(exc):
            raise syntax_error(exc, data) from None
        try:
            root = etree.fromstring(data, safe_parser(recover=True))
        except etree.XMLSyntaxError:
            raise syntax_error(exc, data) from None
        if root is None:
            raise syntax_error(exc, data) from None
    docinfo: Any = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise _refuse("a DOCTYPE is not allowed (no DTDs, no entities)", line=1)
    check_limits(root, limits, len(data))
    return root


class StreamGuard:
    """Limits for a document parsed as a stream of events (an lxml parser ``target``).

    A target subclass calls :meth:`enter` from ``start``, :meth:`leave` from ``end`` and
    :meth:`text` from ``data`` for text it keeps; :meth:`feed_prolog` holds back the first
    bytes until the prolog has been checked for a DOCTYPE.
    """

    def __init__(self, limits: XmlLimits) -> None:
        self.limits = limits
        self.depth = 0
        self.elements = 0
        self.total = 0
        self.path: list[str] = []
        self._text = 0
        self._head = b""
        self._prolog_checked = False

    def feed_prolog(self, chunk: bytes) -> bytes:
        """Count and screen ``chunk``; return the bytes that may go to the parser now."""
        self.total += len(chunk)
        if self.total > self.limits.max_bytes:
            raise _refuse(f"more than the limit of {self.limits.max_bytes} bytes")
        if self._prolog_checked:
            return chunk
        self._head += chunk
        start = self._root_start(self._head)
        if start is None and len(self._head) < 65536:
            return b""  # the root element has not begun yet: keep reading
        check_prolog(self._head)
        self._prolog_checked = True
        head, self._head = self._head, b""
        return head

    def flush(self) -> bytes:
        """The held-back bytes at the end of the input (a document without a root)."""
        if not self._prolog_checked:
            check_prolog(self._head)
            self._prolog_checked = True
        head, self._head = self._head, b""
        return head

    @staticmethod
    def _root_start(data: bytes) -> int | None:
        pos = 0
        while True:
            pos = data.find(b"<", pos)
            if pos < 0 or pos + 1 >= len(data):
                return None
            if data[pos + 1 : pos + 2] not in (b"?", b"!"):
                return pos
            pos += 1

    def enter(self, tag: str, attrib: dict[str, str]) -> None:
        self.depth += 1
        self.elements += 1
        self._text = 0
        self.path.append(local_name(tag))
        where = "/" + "/".join(self.path)
        if self.depth > self.limits.max_depth:
            raise _refuse(f"elements nested deeper than {self.limits.max_depth}", path=where)
        if self.elements > self.limits.max_elements:
            raise _refuse(f"more than {self.limits.max_elements} elements", path=where)
        for value in attrib.values():
            if len(value) > self.limits.max_attribute_length:
                raise _refuse(
                    f"an attribute value longer than {self.limits.max_attribute_length} characters",
                    path=where,
                )

    def leave(self) -> None:
        self.depth -= 1
        self._text = 0
        if self.path:
            self.path.pop()

    def text(self, size: int) -> None:
        self._text += size
        if self._text > self.limits.max_text:
            raise _refuse(
                f"a text node longer than {self.limits.max_text} characters",
                path="/" + "/".join(self.path),
            )
