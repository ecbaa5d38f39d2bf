"""The blob store and the streaming paths around it: a large package in, its files stored by
digest, and the same package written out again, with memory that does not grow with the
files."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import time
import tracemalloc
from pathlib import Path

import pytest

from gateway.blobs import BlobStore
from gateway.codecs.edxml import decode_edxml, encode_edxml, iter_edxml, spool_edxml
from gateway.envelope import DocumentEnvelope
from gateway.errors import NotFound

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "edxml" / "samples" / "edoc_new.edxml"
_ENCODED = re.compile(rb"(<(?:edXML:)?ContentTransferEncoded[^>]*>)[^<]*(</)")


def with_file(data: bytes) -> bytes:
    """The real sample package, its attachment replaced by ``data`` (76-character lines)."""
    return _ENCODED.sub(lambda m: m.group(1) + base64.encodebytes(data) + m.group(2),
                        SAMPLE.read_bytes())


def test_a_file_is_stored_once_by_its_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"giay phep xay dung")
    assert digest == hashlib.sha256(b"giay phep xay dung").hexdigest()
    assert store.put(b"giay phep xay dung") == digest
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [digest]
    assert b"".join(store.chunks(digest, chunk_size=4)) == b"giay phep xay dung"
    with pytest.raises(NotFound):
        list(store.chunks("0" * 64))
    with pytest.raises(ValueError, match="not a SHA-256"):
        store.path("../../etc/passwd")


def test_an_unfinished_write_leaves_only_a_temporary_file_that_is_swept(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    sink = store.sink()
    sink.write(b"half a file")  # the process dies here: no commit
    assert not store.exists(sink.sha256)
    parts = list((tmp_path / "tmp").iterdir())
    assert len(parts) == 1
    assert store.sweep() == 0  # too young: might be a write in progress
    old = time.time() - 7200
    os.utime(parts[0], (old, old))
    assert store.sweep() == 1 and list((tmp_path / "tmp").iterdir()) == []
    sink.discard()


def test_a_large_package_round_trips_through_the_store_with_flat_memory(tmp_path: Path) -> None:
    data = os.urandom(20 * 1024 * 1024)
    package = with_file(data)
    store = BlobStore(tmp_path)
    source = tmp_path / "in.edxml"
    source.write_bytes(package)
    del package
    sinks = []

    def open_sink(_index: int) -> object:
        sinks.append(store.sink())
        return sinks[-1]

    tracemalloc.start()
    try:
        with source.open("rb") as stream:
            spooled = spool_edxml(stream, open_sink)  # type: ignore[arg-type]
        digests = [s.commit() for s in sinks]
        envelope = decode_edxml(spooled.skeleton, claims=spooled.claims)
        out = tmp_path / "out.edxml"
        with out.open("wb") as sink:
            for piece in iter_edxml(envelope, store.chunks):
                sink.write(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # About the read and write chunks (a few hundred KiB), whatever the file's size.
    assert peak < len(data) / 10, f"peak {peak} bytes for a {len(data)} byte file"
    digest = hashlib.sha256(data).hexdigest()
    assert digests == [digest] and len(spooled.skeleton) < 10_000
    assert isinstance(envelope, DocumentEnvelope)
    assert [(a.size, a.sha256, a.content) for a in envelope.body.attachments] == [
        (len(data), digest, None)]
    # What goes out is the sample again, file included, equal in meaning to what came in.
    again = BlobStore(tmp_path / "again")
    with out.open("rb") as stream, again.sink() as sink:
        respooled = spool_edxml(stream, lambda _i: sink)
        assert sink.commit() == digest
    back = decode_edxml(respooled.skeleton, claims=respooled.claims)
    assert back.model_dump(exclude={"body": {"attachments"}}) == envelope.model_dump(
        exclude={"body": {"attachments"}})


def test_a_package_without_stored_files_is_written_as_usual() -> None:
    envelope = decode_edxml(SAMPLE.read_bytes())
    assert b"".join(iter_edxml(envelope, lambda _digest: iter(()))) == encode_edxml(envelope)


def test_two_packages_differing_only_in_their_file_have_different_skeletons(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path)
    skeletons = []
    for data in (b"a" * 3000, b"b" * 3000):
        with store.sink() as sink:
            spooled = spool_edxml(io.BytesIO(with_file(data)), lambda _i: sink)
        skeletons.append(spooled.skeleton)
    assert skeletons[0] != skeletons[1]  # so a resent DocumentId with another file is a 409


def _age(store: BlobStore, digest: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(store.path(digest), (then, then))


def test_a_file_claimed_again_is_younger_and_outlives_the_first_writers_clean_up(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path)
    with store.sink() as first:
        first.write(b"the same bytes")
        digest = first.commit()
    # A second request stores the same bytes within the same tick of the file clock.
    with store.sink() as second:
        second.write(b"the same bytes")
        assert second.commit() == digest
    assert second.committed_ns > first.committed_ns
    store.remove({digest: first.committed_ns})  # the first request was refused
    assert store.exists(digest)  # the second one's message still names it
    store.remove({digest: second.committed_ns})  # nothing claimed it since: gone
    assert not store.exists(digest)


def test_collect_removes_only_old_files_that_no_message_names(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    named, orphan, young = store.put(b"named"), store.put(b"orphan"), store.put(b"young")
    _age(store, named, 7200)
    _age(store, orphan, 7200)
    candidates = dict(store.stored(3600))
    assert set(candidates) == {named, orphan}
    assert candidates[orphan] == len(b"orphan")
    # Claimed again while the references were read: no longer old enough to go.
    store.put(b"named")
    _age(store, orphan, 7200)
    assert store.collect(candidates, {young}, 3600) == [orphan]
    assert {d for d in (named, orphan, young) if store.exists(d)} == {named, young}
