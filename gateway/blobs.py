"""The blob store: attachments too large to travel inline, kept once by their SHA-256.

A claim check (DESIGN.md): a file above the inline limit never goes through RabbitMQ or the
message table. It is written here once, named by the SHA-256 of its bytes, and the Envelope
carries only ``size`` and ``sha256``. The same file sent twice, or to a hundred recipients, is
one file on disk.

Writes are crash-safe: bytes go to a temporary file in the store's own ``tmp`` folder (same
file system), are flushed and fsynced, and only then renamed to their final name, so a name
that exists always holds the whole file. A crash leaves at most a temporary file, which
:meth:`BlobStore.sweep` removes. Reading is by chunks, so memory stays flat whatever the size.

Everything here is blocking file I/O: call it from a worker thread (``asyncio.to_thread``)
or in small chunks, never with a whole file in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Set
from datetime import timedelta
from pathlib import Path
from typing import IO

from gateway.codecs.edxml import Spooled, spool_edxml
from gateway.codecs.xmlsafe import XmlLimits
from gateway.errors import NotFound

#: A SHA-256 digest as the store names files (lower-case hex).
DIGEST = re.compile(r"[0-9a-f]{64}")
CHUNK = 256 * 1024
#: A package no larger than this cannot hold a file above the inline limit (the Envelope's
#: ``Attachment.content`` max length): it is decoded in memory, a larger one through the store.
STREAM_ABOVE = 1_400_000
#: How long a file uploaded ahead of its JSON message (``POST /api/v1/attachments``) may be
#: named by that agency's messages, and is kept by ``lienthong blobs gc`` while unnamed.
UPLOAD_VALID = timedelta(hours=24)


class BlobSink:
    """A file being written: ``write`` pieces, then ``commit`` (named by its digest) or
    ``discard``. Also a context manager that discards what was not committed."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._tmp = store.root / "tmp" / f"{uuid.uuid4().hex}.part"
        self._file: IO[bytes] | None = open(self._tmp, "xb")  # closed by commit or discard
        self._hash = hashlib.sha256()
        self.size = 0
        #: The stored file's mtime once committed: what a clean-up compares before removing.
        self.committed_ns = 0
        #: Committed as a new file (not one the store already had).
        self.created = False

    def write(self, data: bytes) -> int:
        assert self._file is not None, "write after commit or discard"
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> str:
        """Make the file durable under its digest; returns the digest. A file with the same
        digest already there is kept (same bytes) and this one dropped."""
        assert self._file is not None, "commit twice"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        digest = self.sha256
        final = self._store.path(digest)
        if final.exists():
            # Claimed again: its age restarts, so neither the collector nor another request's
            # clean-up (which removes only a file unchanged since it wrote it) takes it now.
            try:
                self.committed_ns = self._store.claim(digest)
            except NotFound:  # collected in between: ours becomes the stored one
                pass
            else:
                self._tmp.unlink(missing_ok=True)
                return digest
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, final)
        self.committed_ns = final.stat().st_mtime_ns
        self.created = True
        return digest

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()  # after commit: nothing left to remove


class BlobStore:
    """Content-addressed files under ``root``: ``root/ab/cd/abcd...`` by SHA-256."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def sink(self) -> BlobSink:
        return BlobSink(self)

    def path(self, sha256: str) -> Path:
        if not DIGEST.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 digest: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no stored attachment {sha256}") from None

    def chunks(self, sha256: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The file's bytes, a chunk at a time; :class:`NotFound` when it is not stored."""
        try:
            handle = open(self.path(sha256), "rb")  # closed below
        except FileNotFoundError:
            raise NotFound(f"no stored attachment {sha256}") from None
        with handle:
            while block := handle.read(chunk_size):
                yield block

    def put(self, data: bytes) -> str:
        """Store small bytes at once (tests, inline files promoted to the store)."""
        with self.sink() as sink:
            sink.write(data)
            return sink.commit()

    def claim(self, sha256: str) -> int:
        """A message is about to name this file: make it young again (its mtime strictly
        later, even within one tick of the coarse file clock), so that neither the collector
        nor a refused request's clean-up takes it now; returns the new mtime (ns).
        :class:`NotFound` when it is not stored."""
        path = self.path(sha256)
        try:
            now = max(time.time_ns(), path.stat().st_mtime_ns + 1)
            os.utime(path, ns=(now, now))
        except FileNotFoundError:
            raise NotFound(f"no stored attachment {sha256}") from None
        return now

    def remove(self, written: Mapping[str, int]) -> None:
        """Remove the files a refused package brought (digest: the mtime its commit left),
        each only if nothing claimed it since: a concurrent request that stored the same bytes
        renewed its mtime (:meth:`BlobSink.commit`), and the file is then left alone."""
        for digest, committed_ns in written.items():
            path = self.path(digest)
            try:
                if path.stat().st_mtime_ns == committed_ns:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                continue

    def stored(self, older_than: float) -> Iterator[tuple[str, int]]:
        """(digest, size) of every stored file last written or claimed more than
        ``older_than`` seconds ago."""
        cutoff = time.time() - older_than
        for path in self.root.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*"):
            if not DIGEST.fullmatch(path.name):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if stat.st_mtime < cutoff:
                yield path.name, stat.st_size

    def collect(self, candidates: Iterable[str], referenced: Set[str],
                older_than: float) -> list[str]:
        """Remove the ``candidates`` (from :meth:`stored`) that no message refers to and
        that are still older than ``older_than`` seconds (one claimed while the references
        were read is kept); returns the removed digests."""
        cutoff = time.time() - older_than
        removed: list[str] = []
        for digest in candidates:
            if digest in referenced:
                continue
            path = self.path(digest)
            try:
                if path.stat().st_mtime >= cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(digest)
        return removed

    def sweep(self, older_than: float = 3600.0) -> int:
        """Remove temporary files a crash left behind (older than ``older_than`` seconds, so
        a write in progress is never touched); returns how many."""
        removed, cutoff = 0, time.time() - older_than
        for part in (self.root / "tmp").glob("*.part"):
            try:
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def spool_package(blobs: BlobStore, stream: IO[bytes], limits: XmlLimits
                  ) -> tuple[Spooled, dict[str, int]]:
    """Read an edXML package once (:func:`gateway.codecs.edxml.spool_edxml`), its files
    committed to the store; returns the skeleton and claims, and the files that were not in
    the store before with their mtime (what to :meth:`BlobStore.remove` if the package is
    then refused)."""
    sinks: list[BlobSink] = []

    def open_sink(_index: int) -> BlobSink:
        sinks.append(blobs.sink())
        return sinks[-1]

    try:
        spooled = spool_edxml(stream, open_sink, limits=limits)
        for sink in sinks:
            sink.commit()
        return spooled, {s.sha256: s.committed_ns for s in sinks if s.created}
    finally:
        for sink in sinks:
            sink.discard()  # after a commit: nothing left to remove
