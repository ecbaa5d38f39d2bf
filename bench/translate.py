"""Translation speed: edXML and canonical JSON envelopes of about 5 KB, per core.

    .venv/bin/python bench/translate.py [--seconds S] [--repeat N] [--size BYTES] [--json PATH]

One process, one thread, so every figure is per core. For each format, a message is parsed,
validated and written: ``decode`` (hardened parse, validation as the XSD / JSON Schema would do
it plus pydantic's, mapping to the Envelope), ``encode`` (Envelope to bytes), and ``round trip``
(both, the unit the target is stated in: 5,000 messages per second per core or more).
``translate`` rows go from one format to the other (edXML in, JSON out and back); the
``update`` row is a round trip of an update package (its message id is a digest of its content).
Each row is the best of ``--repeat`` runs of ``--seconds``, printed beside the baseline measured
in the same run on the same bytes: the floor any codec on these libraries pays, lxml parsing and
serialising the package (the same hardened parser settings, no mapping, no validation) for the
edXML rows, and orjson loading and dumping the JSON for the JSON rows; ``share`` is the row's
rate as a part of its floor. The ``before`` column is history: the same rows measured before the
codec's speed work. Figures are printed, never asserted: a benchmark is not a test.

The edXML message is the sample ``edoc_new.edxml`` (document package: sender, recipient, code,
promulgation, signer, other info, trace, business block, signature, one attachment) with its
attachment cut so the package is ``--size`` bytes (the package without its attachment is about
6.7 KB, so that is the least it can be); the JSON message is the canonical JSON of the same
envelope, its content padded to the same size. The ``gateway-written`` rows take a package of
``--size`` bytes as the gateway writes it for a document system (sender, two recipients,
number and notation, type, subject, promulgation, signer, one attachment filling the size):
fewer elements than the vendor sample, which carries a trace, a business block and a
signature; each set of rows is compared with lxml on its own bytes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
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

import orjson  # noqa: E402
from lxml import etree  # noqa: E402

from gateway.codecs import canonical, xmlsafe  # noqa: E402
from gateway.codecs.edxml import decode_edxml, encode_edxml  # noqa: E402
from gateway.envelope import Attachment, DocumentEnvelope  # noqa: E402

SAMPLES = REPO_ROOT / "tests" / "fixtures" / "edxml" / "samples"
SAMPLE = SAMPLES / "edoc_new.edxml"
UPDATE = SAMPLES / "edoc_update.edxml"
FALLBACK = REPO_ROOT / "tests" / "fixtures" / "edxml" / "edoc_vendor_extensions.edxml"

#: msg/s per row before the speed work (commit a4414d8: XSD validation on every decode, a generic
#: writer), best of 3 runs of 2 s on the project's 2-core machine: history, printed as "before".
BEFORE = {
    "edXML decode (parse+validate)": 4188,
    "edXML encode (write)": 12165,
    "edXML round trip": 2764,
    "JSON decode (parse+validate)": 46763,
    "JSON encode (write)": 108019,
    "JSON round trip": 29248,
    "translate edXML -> JSON": 3725,
    "translate JSON -> edXML": 7880,
}


def edxml_message(size: int, sample: Path = SAMPLE) -> bytes:
    """A real document package, its attachment cut so the whole is about ``size`` bytes."""
    data = sample.read_bytes() if sample.exists() else FALLBACK.read_bytes()
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


def gateway_message(size: int) -> bytes:
    """A document package as the gateway writes it (no gateway extension), one attachment
    filling it to about ``size`` bytes."""
    envelope = DocumentEnvelope.model_validate({
        "kind": "document",
        "header": {"id": "7f1d2c1e-8a50-4d2f-9b7e-2f0c1a5d3e41", "sender": "000.00.35.H57",
                   "to": [{"agency": "000.00.00.H57"}, {"agency": "000.00.00.G22"}]},
        "body": {"number": "212", "notation": "BC-UBND",
                 "type": {"code": "BC", "name": "Báo cáo"},
                 "subject": "Báo cáo tình hình triển khai phòng, chống bão lũ trên địa bàn",
                 "promulgation": {"place": "Phong Điền", "date": "2026-11-20"},
                 "signer": {"name": "Lê Văn Hòa", "position": "Chủ tịch UBND huyện"}},
    })
    without = len(encode_edxml(envelope, gateway_extension=False))
    raw = os.urandom(max(0, size - without - 200) * 3 // 4)
    attachment = Attachment(name="bao-cao-212.pdf", media_type="application/pdf",
                            size=len(raw), sha256=hashlib.sha256(raw).hexdigest(),
                            content=base64.b64encode(raw).decode())
    body = envelope.body.model_copy(update={"attachments": [attachment]})
    return encode_edxml(envelope.model_copy(update={"body": body}), gateway_extension=False)


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
    parser.add_argument("--seconds", type=float, default=2.0, help="time per run (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row, best kept (1)")
    parser.add_argument("--size", type=int, default=5000, help="message size in bytes (5000)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    edxml = edxml_message(args.size)
    envelope = decode_edxml(edxml)
    assert isinstance(envelope, DocumentEnvelope)
    as_json = json_message(envelope, args.size)
    json_envelope = canonical.decode(as_json)
    update = edxml_message(args.size, UPDATE)
    ours = gateway_message(args.size)
    ours_envelope = decode_edxml(ours)

    # (row, bytes, step, the baseline it is compared with)
    rows: list[tuple[str, int, Callable[[], object], str]] = [
        ("edXML decode (parse+validate)", len(edxml), lambda: decode_edxml(edxml), "edXML"),
        ("edXML encode (write)", len(edxml), lambda: encode_edxml(envelope), "edXML"),
        ("edXML round trip", len(edxml), lambda: encode_edxml(decode_edxml(edxml)), "edXML"),
        ("JSON decode (parse+validate)", len(as_json), lambda: canonical.decode(as_json), "JSON"),
        ("JSON encode (write)", len(as_json), lambda: canonical.encode(json_envelope), "JSON"),
        ("JSON round trip", len(as_json), lambda: canonical.encode(canonical.decode(as_json)),
         "JSON"),
        ("translate edXML -> JSON", len(edxml), lambda: canonical.encode(decode_edxml(edxml)),
         "edXML"),
        ("translate JSON -> edXML", len(as_json),
         lambda: encode_edxml(canonical.decode(as_json)), "edXML"),
        ("edXML round trip (update)", len(update), lambda: encode_edxml(decode_edxml(update)),
         "edXML"),
        ("gateway-written decode", len(ours), lambda: decode_edxml(ours), "ours"),
        ("gateway-written encode", len(ours),
         lambda: encode_edxml(ours_envelope, gateway_extension=False), "ours"),
        ("gateway-written round trip", len(ours),
         lambda: encode_edxml(decode_edxml(ours), gateway_extension=False), "ours"),
    ]
    print(
        f"translation speed, one thread (per core); Python {platform.python_version()}, "
        f"{platform.machine()}, load average {os.getloadavg()[0]:.2f}, "
        f"best of {args.repeat} x {args.seconds:g} s per row"
    )
    floors = {
        "edXML": rate(lambda: etree.tostring(xmlsafe.parse(edxml, drop_blank_text=True)),
                      args.seconds)[0],
        "JSON": rate(lambda: orjson.dumps(orjson.loads(as_json)), args.seconds)[0],
        "ours": rate(lambda: etree.tostring(xmlsafe.parse(ours, drop_blank_text=True)),
                     args.seconds)[0],
    }
    print(f"baseline (same run): lxml parse+serialise {floors['edXML']:,.0f} msg/s (sample), "
          f"{floors['ours']:,.0f} msg/s (gateway-written); orjson loads+dumps "
          f"{floors['JSON']:,.0f} msg/s")
    print(f"{'row':32} {'bytes':>7} {'msg/s':>9} {'µs/msg':>8} {'baseline':>9} {'share':>6} "
          f"{'before':>7}")
    results: list[dict[str, Any]] = []
    for name, size, step, baseline in rows:
        runs = [rate(step, args.seconds) for _ in range(max(1, args.repeat))]
        per_second, count = max(runs)
        floor = floors[baseline]
        before = BEFORE.get(name)
        results.append({"row": name, "bytes": size, "msg_per_s": per_second, "count": count,
                        "baseline_msg_per_s": floor, "before_msg_per_s": before})
        print(f"{name:32} {size:7d} {per_second:9,.0f} {1e6 / per_second:8.1f} {floor:9,.0f} "
              f"{per_second / floor:6.1%} {before or '-':>7}")
    print("target: 5,000 msg/s per core for a round trip (parse, validate and write)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
