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
import io
import logging
import time
import zipfile
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
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
    """Where zipfile writes: bytes kept until taken. Not seekable, so zipfile writes each
    entry's sizes and CRC after its data (a data descriptor) instead of seeking back."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.held = 0
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.held += len(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        self.held = 0
        return out


READ_AHEAD = 16  # outputs fetched ahead of the one being written
WHOLE = 2 << 20  # an output up to this size is fetched ahead whole; a larger one streamed


def _fetched(ctx: Web, entries: Iterator[Any]) -> Iterator[tuple[Any, bytes | None, Any]]:
    """(entry, its bytes, or a stream to read), in order, with up to READ_AHEAD small outputs
    fetched at once (a request's latency, not the bytes, is what an export of many small files
    waits on): at most READ_AHEAD x WHOLE bytes held ahead. A larger output is opened only when
    its turn comes, and read a chunk at a time."""
    with ThreadPoolExecutor(8, thread_name_prefix="export") as pool:

        def fetch(entry: Any) -> tuple[Any, bytes | None, Any]:
            reading = ctx.outputs.stream(entry.job.location, entry.key)
            if reading is None:
                return entry, None, None
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
                    yield entry, None, ctx.outputs.stream(entry.job.location, entry.key)
                else:
                    yield entry, data, None
        finally:
            for future in ahead:
                future.cancel()


def zip_chunks(ctx: Web, info: JobInfo, filters: dict[str, Any]) -> Iterator[bytes]:
    """The zip, a piece at a time (see the module's docstring)."""
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", allowZip64=True)
    stamp = time.gmtime()[:6]
    table = io.StringIO()
    rows = csv.DictWriter(table, EXPORT_COLUMNS, lineterminator="\n")
    rows.writeheader()
    missing = io.StringIO()
    lost = csv.writer(missing, lineterminator="\n")
    reading = None
    try:
        for entry, data, reading in _fetched(ctx, export_entries(ctx.store, info, filters)):
            if data is None and reading is None:
                lost.writerow([entry.name, entry.row["render"], "the output is not there"])
                continue
            item = zipfile.ZipInfo(entry.name, stamp)
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
            if reading is not None:
                reading.close()
                reading = None
            rows.writerow(entry.row)
            if sink.held >= FLUSH:
                yield sink.take()
        archive.writestr(_item("renders.csv", stamp), table.getvalue().encode())
        if missing.tell():
            head = "key,render,why\n"
            archive.writestr(_item("not-exported.csv", stamp), (head + missing.getvalue()).encode())
        archive.close()
        yield sink.take()
    finally:
        if reading is not None:
            reading.close()


def _item(name: str, stamp: tuple[int, ...]) -> zipfile.ZipInfo:
    item = zipfile.ZipInfo(name, stamp)
    item.compress_type = zipfile.ZIP_DEFLATED
    return item


class ClosingStream(StreamingResponse):
    """A StreamingResponse that closes its body whatever ended it: Starlette stops iterating
    when the client goes away but leaves the generator to the garbage collector, which may
    be much later (the output being read stays open, the export counted)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def streamed(ctx: Web, info: JobInfo, filters: dict[str, Any]) -> AsyncIterator[bytes]:
    """``zip_chunks`` for a StreamingResponse: each piece made in a worker thread (storage
    and Redis reads block), and the generator closed whatever ends the response, a client
    gone away included (shielded from the cancel that says so)."""
    pieces = zip_chunks(ctx, info, filters)
    ctx.exports += 1
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
        ctx.exports -= 1
