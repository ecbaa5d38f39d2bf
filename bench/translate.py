"""Translation speed: edXML and canonical JSON envelopes of about 5 KB, per core.

    .venv/bin/python bench/translate.py [--seconds S] [--size BYTES] [--json PATH]

One process, one thread, so every figure is per core. For each format, a message is parsed,
validated and written: ``decode`` (hardened parse, XSD / JSON Schema-equivalent pydantic
validation, mapping to the Envelope), ``encode`` (Envelope to bytes), and ``round trip`` (both,
the unit the target is stated in: 5,000 messages per second per core or more). ``translate``
rows go from one format to the other (edXML in, JSON out and back). Figures are printed, never
asserted: a benchmark is not a test.

The edXML message is the sample ``edoc_new.edxml`` (document package: sender, recipient, code,
promulgation, signer, other info, trace, business block, one attachment) with its attachment cut
so the package is ``--size`` bytes; the JSON message is the canonical JSON of the same envelope,
its content padded to the same size.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere: import the local gateway
    sys.path.insert(0, str(REPO_ROOT))

from gateway.codecs import canonical  # noqa: E402
from gateway.codecs.edxml import decode_edxml, encode_edxml  # noqa: E402
from gateway.envelope import DocumentEnvelope  # noqa: E402

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "edxml" / "samples" / "edoc_new.edxml"
FALLBACK = REPO_ROOT / "tests" / "fixtures" / "edxml" / "edoc_vendor_extensions.edxml"


def edxml_message(size: int) -> bytes:
    """A real document package, its attachment cut so the whole is about ``size`` bytes."""
    data = SAMPLE.read_bytes() if SAMPLE.exists() else FALLBACK.read_bytes()
    pattern = re.compile(rb"(<(?:edXML:)?ContentTransferEncoded[^>]*>)[^<]*(</)")
    without = pattern.sub(lambda m: m.group(1) + m.group(2), data)
    room = max(0, size - len(without))
    payload = base64.b64encode(os.urandom(room * 3 // 4))
    return pattern.sub(lambda m: m.group(1) + payload + m.group(2), data)


def json_message(envelope: DocumentEnvelope, size: int) -> bytes:
    """The canonical JSON of the same envelope, its content padded to about ``size`` bytes."""
    base = canonical.encode(envelope)
    pad = "Nội dung văn bản. " * max(0, (size - len(base)) // 20)
    padded = envelope.model_copy(
        update={"body": envelope.body.model_copy(update={"content": pad.strip() or None})}
    )
    return canonical.encode(padded)


def rate(step: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Operations per second of ``step`` over about ``seconds`` (after a short warm-up)."""
    for _ in range(50):
        step()
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(100):
            step()
        count += 100
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started), count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per row (default 2)")
    parser.add_argument("--size", type=int, default=5000, help="message size in bytes (5000)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    edxml = edxml_message(args.size)
    envelope = decode_edxml(edxml)
    assert isinstance(envelope, DocumentEnvelope)
    as_json = json_message(envelope, args.size)
    json_envelope = canonical.decode(as_json)

    rows: list[tuple[str, int, Callable[[], object]]] = [
        ("edXML decode (parse+validate)", len(edxml), lambda: decode_edxml(edxml)),
        ("edXML encode (write)", len(edxml), lambda: encode_edxml(envelope)),
        ("edXML round trip", len(edxml), lambda: encode_edxml(decode_edxml(edxml))),
        ("JSON decode (parse+validate)", len(as_json), lambda: canonical.decode(as_json)),
        ("JSON encode (write)", len(as_json), lambda: canonical.encode(json_envelope)),
        ("JSON round trip", len(as_json), lambda: canonical.encode(canonical.decode(as_json))),
        ("translate edXML -> JSON", len(edxml), lambda: canonical.encode(decode_edxml(edxml))),
        ("translate JSON -> edXML", len(as_json), lambda: encode_edxml(canonical.decode(as_json))),
    ]
    print(
        f"translation speed, one thread (per core); Python {platform.python_version()}, "
        f"{platform.machine()}, load average {os.getloadavg()[0]:.2f}, "
        f"{args.seconds:g} s per row"
    )
    print(f"{'row':32} {'bytes':>7} {'msg/s':>9} {'µs/msg':>8}")
    results: list[dict[str, Any]] = []
    for name, size, step in rows:
        per_second, count = rate(step, args.seconds)
        results.append({"row": name, "bytes": size, "msg_per_s": per_second, "count": count})
        print(f"{name:32} {size:7d} {per_second:9,.0f} {1e6 / per_second:8.1f}")
    print("target: 5,000 msg/s per core for a round trip (parse, validate and write)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
