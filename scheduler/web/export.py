"""A job's approved renders (or any filter of them) as one zip, streamed from storage through
the server in bounded memory: each output is written on as it comes (stored, not
compressed: the images are compressed already), so what the server holds
is a few small outputs fetched ahead (READ_AHEAD of at most WHOLE bytes: an export of many
small files waits on each request's latency, not on bytes) or one chunk of a large one, the
zip's directory and the CSV's rows; never the whole set. The zip ends with
``renders.csv`` (key, render, job, content, style, size, decision, reviewer, note, device,
cost), one row per file in it, and, where some output could not be read, ``not-exported.csv``.

Nothing is written to the server's disk. A client that goes away mid-stream closes the
generator: the output being read is closed and nothing is left behind."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import time
import zipfile
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import anyio
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from common.state import JobInfo
from scheduler.review import EXPORT_COLUMNS, export_entries
from scheduler.web.context import Web

log = logging.getLogger("stylebatch.web.export")
FLUSH = 1 << 20  # bytes gathered before they are sent on


class _Sink(io.RawIOBase):
    """Where zipfile writes: bytes kept until taken, in one buffer (the zip's directory comes
    as four small writes a file: 400,000 bytes objects for 100,000 files). Not seekable, so
    zipfile writes each entry's sizes and CRC after its data (a data descriptor) instead of
    seeking back."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.position = 0

    @property
    def held(self) -> int:
        return len(self.buffer)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buffer += data
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        out = bytes(self.buffer)
        self.buffer.clear()
        return out


TABLES = ("renders.csv", "not-exported.csv")
READ_AHEAD = 16  # outputs fetched ahead of the one being written
WHOLE = 2 << 20  # an output up to this size is fetched ahead whole; a larger one streamed


def _fetched(ctx: Web, entries: Iterator[Any]) -> Iterator[tuple[Any, bytes | None, Any]]:
    """(entry, its bytes, or a stream to read), in order, with up to READ_AHEAD small outputs
    fetched at once (a request's latency, not the bytes, is what an export of many small files
    waits on): at most READ_AHEAD x WHOLE bytes held ahead. A larger output is opened only when
    its turn comes, and read a chunk at a time."""
    with ThreadPoolExecutor(8, thread_name_prefix="export") as pool:

        def fetch(entry: Any) -> tuple[Any, bytes | None, Any]:
            try:
                reading = ctx.outputs.stream(entry.job.location, entry.key)
            except Exception as exc:  # S3 away or refusing this one: listed, not fatal
                return entry, None, Unreadable(_why(exc))
            if reading is None:
                return entry, None, Unreadable("the output is not there")
            if reading.size > WHOLE:
                reading.close()  # its turn will open it again
                return entry, None, "later"
            try:
                return entry, b"".join(reading.chunks), None
            finally:
                reading.close()

        ahead: deque = deque(pool.submit(fetch, e) for e in islice(entries, READ_AHEAD))
        try:
            while ahead:
                entry, data, later = ahead.popleft().result()
                following = next(entries, None)
                if following is not None:
                    ahead.append(pool.submit(fetch, following))
                if later == "later":
                    try:
                        later = ctx.outputs.stream(entry.job.location, entry.key)
                    except Exception as exc:
                        later = Unreadable(_why(exc))
                    yield entry, None, later or Unreadable("the output is not there")
                else:
                    yield entry, data, later
        finally:
            for future in ahead:
                future.cancel()


class _Table:
    """A CSV kept deflated while the zip is written (100,000 rows are some 20 MB as text, a
    tenth of that deflated), read back a chunk at a time into the zip's last entries."""

    def __init__(self, header: list[str]) -> None:
        self.text = io.StringIO()
        self.rows = csv.writer(self.text, lineterminator="\n")
        self.rows.writerow(header)
        self.deflate = zlib.compressobj(6)
        self.parts: list[bytes] = []
        self.count = 0

    def write(self, row: list[Any]) -> None:
        self.rows.writerow(row)
        self.count += 1
        if self.text.tell() >= FLUSH // 16:
            self._pack()

    def _pack(self) -> None:
        self.parts.append(self.deflate.compress(self.text.getvalue().encode()))
        self.text.seek(0)
        self.text.truncate()

    def chunks(self) -> Iterator[bytes]:
        self._pack()
        self.parts.append(self.deflate.flush())
        inflate = zlib.decompressobj()
        while self.parts:
            yield inflate.decompress(self.parts.pop(0))
        yield inflate.flush()


def _seen(name: str) -> bytes:
    """A name as the set of used names holds it: 16 bytes, not the name."""
    return hashlib.blake2b(name.encode(), digest_size=16).digest()


def zip_chunks(ctx: Web, info: JobInfo, filters: dict[str, Any]) -> Iterator[bytes]:
    """The zip, a piece at a time (see the module's docstring). What grows with the number of
    files: zipfile's directory entry for each, a digest of each name, the tables deflated."""
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", allowZip64=True)
    stamp = time.gmtime()[:6]
    table = _Table(list(EXPORT_COLUMNS))
    missing = _Table(["key", "render", "why"])
    reading = None
    names = {_seen(t) for t in TABLES}  # a name is used once: an output never shadows a table
    try:
        for entry, data, reading in _fetched(ctx, export_entries(ctx.store, info, filters)):
            if isinstance(reading, Unreadable):
                missing.write([entry.name, entry.row["render"], reading.why])
                reading = None
                continue
            name = entry.name
            if _seen(name) in names:
                name = f"{entry.job.job_id}/{entry.key}"
            if _seen(name) in names:
                missing.write([entry.name, entry.row["render"], "a second file of that name"])
                continue
            names.add(_seen(name))
            entry.row["key"] = name
            item = zipfile.ZipInfo(name, stamp)
            item.compress_type = zipfile.ZIP_STORED
            item.file_size = len(data) if data is not None else reading.size
            with archive.open(item, "w", force_zip64=item.file_size > 2**31) as out:
                if data is not None:
                    out.write(data)
                else:
                    for chunk in reading.chunks:
                        out.write(chunk)
                        if sink.held >= FLUSH:
                            yield sink.take()
            archive.NameToInfo.pop(name, None)  # only for zipfile's duplicate warning
            if reading is not None:
                reading.close()
                reading = None
            table.write([entry.row.get(column, "") for column in EXPORT_COLUMNS])
            if sink.held >= FLUSH:
                yield sink.take()
        for name, kept in ((TABLES[0], table), (TABLES[1], missing)):
            if name == TABLES[1] and not kept.count:
                continue
            with archive.open(_item(name, stamp), "w") as out:
                for chunk in kept.chunks():
                    out.write(chunk)
                    if sink.held >= FLUSH:
                        yield sink.take()
        archive.close()
        yield sink.take()
    finally:
        if reading is not None:
            reading.close()


@dataclass(frozen=True)
class Unreadable:
    """An output that could not be read before its first byte: listed in not-exported.csv
    with why, and the zip goes on. (One that fails part way through cannot be taken back
    from a zip already sent: the response is cut short, and the client sees a broken
    download, never a wrong file.)"""

    why: str


def _why(exc: Exception) -> str:
    return str(exc).split(": ", 1)[-1][:200] or type(exc).__name__


def _item(name: str, stamp: tuple[int, ...]) -> zipfile.ZipInfo:
    item = zipfile.ZipInfo(name, stamp)
    item.compress_type = zipfile.ZIP_DEFLATED
    return item


class ClosingStream(StreamingResponse):
    """A StreamingResponse that closes its body whatever ended it (Starlette stops iterating
    when the client goes away but leaves the generator to the garbage collector, which may
    be much later: the output being read stays open), then calls ``on_close``."""

    def __init__(self, content: Any, on_close: Any, **kw: Any):
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            self.on_close()


async def streamed(ctx: Web, info: JobInfo, filters: dict[str, Any]) -> AsyncIterator[bytes]:
    """``zip_chunks`` for a StreamingResponse: each piece made in a worker thread (storage
    and Redis reads block), and the generator closed whatever ends the response, a client
    gone away included (shielded from the cancel that says so)."""
    pieces = zip_chunks(ctx, info, filters)
    try:
        while True:
            piece = await run_in_threadpool(next, pieces, None)
            if piece is None:
                return
            if piece:
                yield piece
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(pieces.close)
