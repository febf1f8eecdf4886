"""The archive of finished streams (seed Step 11, docs/protocol.md §1 ``HUB_ARCHIVE_URL``).

When an order is done its stream is written to the archive as one object,
``{prefix}/{streamId}.json``: a JSON array of the stream's events, each exactly
:attr:`hub.events.Event.json` (the docs/protocol.md §3 fields, so archived events keep
their ``seq`` and ``pos``). Only after :meth:`Archive.put` has returned, which
means the object was written *and read back byte for byte*, may the caller delete
the events from the streams DB. :meth:`Archive.get` turns the object back into
:class:`~hub.events.Event` objects equal to the originals, so
``GET /api/streams/{id}`` answers the same for an archived stream.

Readers read an archived stream a page at a time (:meth:`Archive.read`), never the
whole object per reader: the first read of a stream reads the object once (one at a
time per archive), checks every event and keeps an index of where each one lies
(:class:`_Index`: its ``seq`` and byte range, 24 bytes an event, and the stream's
opcodes); each page then reads only its events' bytes (a ranged read: ``pread`` of the
file, an S3 ``Range`` request). Readers of one stream share its index (loaded once even
when they ask at the same time); indexes are kept while their total is under
:data:`INDEX_BYTES`, least recently used first out.

:func:`open_archive` picks the implementation from the URL:

- ``file:///abs/path`` or ``file://relative/path`` -> :class:`LocalArchive`, one
  file per stream, written atomically (temporary file, fsync, ``os.replace``, fsync
  of the directory); the file I/O runs in a worker thread so the event loop never
  blocks on the disk.
- ``s3://bucket/prefix`` -> :class:`S3Archive`, configured by the standard AWS
  variables: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
  ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL_S3`` /
  ``AWS_ENDPOINT_URL`` for S3-compatible stores (MinIO, SeaweedFS, R2, Railway
  buckets...; an ``http://`` endpoint is allowed, requests are path-style). Needs the
  ``s3`` extra.

The S3 client is `obstore <https://developmentseed.org/obstore/>`_: Python bindings
to the Rust ``object_store`` crate (Apache Arrow), natively async (no thread pool),
one ~5.6 MB abi3 wheel with no Python dependencies, typed (``py.typed``), with
timeouts and retries with backoff built in. The alternative, aioboto3, pulls
aiobotocore + boto3 + botocore (tens of MB of pure Python, version-locked to each
other) to do two requests. Plain single-request PUTs are used (no multipart), so an
object is either absent or complete.

Every failure of the store (unreachable, refused, missing bucket, full disk, a
corrupt object) raises :class:`ArchiveError`, an
:class:`~hub.errors.Unavailable` (HTTP 503): the caller keeps the events and
retries later. A stream id that does not match the docs/protocol.md §2 pattern raises
:class:`ValueError` before it can become a file name or an object key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import tempfile
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import msgspec

from hub.config import SettingsError
from hub.errors import Unavailable
from hub.events import STREAM_ID_RE, Event

if TYPE_CHECKING:
    from obstore import GetOptions
    from obstore.store import ClientConfig, RetryConfig, S3Config, S3Store

__all__ = [
    "Archive",
    "ArchiveError",
    "LocalArchive",
    "S3Archive",
    "decode_events",
    "encode_events",
    "index_events",
    "open_archive",
]


class ArchiveError(Unavailable):
    """The archive could not be written or read (503: retry later)."""

    code = "archive_unavailable"


class Archive(Protocol):
    """Where finished streams go: one object per stream."""

    async def put(self, stream_id: str, events: Sequence[Event]) -> None:
        """Write ``{streamId}.json`` (overwriting), read it back and compare.

        Raises :class:`ArchiveError` when the store fails or the read-back differs,
        :class:`ValueError` for an invalid stream id or an event of another stream.
        """
        ...

    async def get(self, stream_id: str) -> list[Event] | None:
        """The archived events of ``stream_id`` in order, or ``None`` when absent (the
        whole stream at once: readers use :meth:`read`)."""
        ...

    async def read(self, stream_id: str, since: int, limit: int) -> list[Event] | None:
        """At most ``limit`` archived events of ``stream_id`` with ``seq > since``, in
        order, reading only their bytes; ``None`` when the stream is not archived."""
        ...

    async def opcodes(self, stream_id: str) -> frozenset[int] | None:
        """The opcodes the archived stream's events have; ``None`` when not archived."""
        ...

    async def close(self) -> None:
        """Release the client (idempotent); later calls raise :class:`ArchiveError`."""
        ...


def _check_stream_id(stream_id: str) -> str:
    if not isinstance(stream_id, str) or not STREAM_ID_RE.match(stream_id):
        raise ValueError(f"invalid stream id {stream_id!r}")
    return stream_id


def encode_events(stream_id: str, events: Sequence[Event]) -> bytes:
    """The archive object's body: a JSON array of ``Event.json`` objects, UTF-8."""
    _check_stream_id(stream_id)
    for event in events:
        if event.stream_id != stream_id:
            raise ValueError(
                f"event {event.id!r} belongs to {event.stream_id!r}, not {stream_id!r}"
            )
    return ("[" + ",".join(event.json for event in events) + "]").encode()


def _corrupt(stream_id: str, why: str) -> ArchiveError:
    return ArchiveError(f"the archived stream {stream_id} is corrupt: {why}")


class _Row(msgspec.Struct, kw_only=True):
    """One element of an archive object: an :attr:`Event.json <hub.events.Event.json>`
    (``name`` is derived from the opcode and not read)."""

    id: str
    stream_id: str = msgspec.field(name="streamId")
    seq: int
    pos: int
    opcode: int
    node_id: str | None = msgspec.field(default=None, name="nodeId")
    point_id: str | None = msgspec.field(default=None, name="pointId")
    delta: float
    payload: msgspec.Raw
    ts: str


_ROWS = msgspec.json.Decoder(list[msgspec.Raw])  # the elements, each its bytes in the body
_ROW = msgspec.json.Decoder(_Row)
_BETWEEN = frozenset(b" \t\r\n,")  # what JSON allows between two elements of an array


def _row(raw: msgspec.Raw | memoryview | bytes, stream_id: str) -> _Row:
    """One element, checked: :class:`ArchiveError` unless it is an event of ``stream_id``."""
    try:
        row = _ROW.decode(raw)
    except msgspec.ValidationError as exc:
        raise _corrupt(stream_id, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise _corrupt(stream_id, "not JSON") from exc
    if row.stream_id != stream_id:
        raise _corrupt(stream_id, f"an event of stream {row.stream_id!r}")
    if not math.isfinite(row.delta):
        raise _corrupt(stream_id, "delta is not a finite number")
    if bytes(memoryview(row.payload)[:1]) != b"{":
        raise _corrupt(stream_id, "payload is not an object")
    return row


def _event(row: _Row) -> Event:
    return Event(
        id=row.id,
        stream_id=row.stream_id,
        seq=row.seq,
        pos=row.pos,
        opcode=row.opcode,
        node_id=row.node_id,
        point_id=row.point_id,
        delta=row.delta,
        # The same encoder as hub.events.parse_draft, so Event.json round-trips exactly.
        payload=msgspec.json.encode(json.loads(bytes(row.payload))).decode(),
        ts=row.ts,
    )


def _elements(stream_id: str, body: bytes | memoryview) -> list[msgspec.Raw]:
    """The archive object's elements, each still encoded (a view of ``body``)."""
    try:
        return _ROWS.decode(body)
    except msgspec.ValidationError as exc:
        raise _corrupt(stream_id, "not a JSON array") from exc
    except msgspec.DecodeError as exc:
        raise _corrupt(stream_id, "not JSON") from exc


def decode_events(stream_id: str, body: bytes) -> list[Event]:
    """Parse an archive object back into events; :class:`ArchiveError` if it is corrupt."""
    _check_stream_id(stream_id)
    return [_event(_row(raw, stream_id)) for raw in _elements(stream_id, body)]


@dataclass(frozen=True, slots=True)
class _Index:
    """Where each event of one archived stream lies in its object: ``seqs[i]`` is in
    ``body[starts[i]:ends[i]]``; ``version`` tells the object read apart from a later
    one (the file's size and time, the S3 ETag)."""

    seqs: array[int]
    starts: array[int]
    ends: array[int]
    opcodes: frozenset[int]
    version: Hashable

    @property
    def nbytes(self) -> int:
        return 24 * len(self.seqs) + 256


def index_events(stream_id: str, body: bytes | memoryview, version: Hashable = None) -> _Index:
    """Check every event of an archive object and note where each one lies;
    :class:`ArchiveError` if it is corrupt (the same checks as :func:`decode_events`)."""
    _check_stream_id(stream_id)
    view = memoryview(body)
    elements = _elements(stream_id, view)
    seqs, starts, ends = array("q"), array("q"), array("q")
    opcodes: set[int] = set()
    at = 0
    while view[at] != ord("["):  # valid JSON: only blanks before it
        at += 1
    at += 1
    for raw in elements:
        while view[at] in _BETWEEN:
            at += 1
        row = _row(raw, stream_id)
        if seqs and row.seq <= seqs[-1]:
            raise _corrupt(stream_id, "events out of seq order")
        seqs.append(row.seq)
        starts.append(at)
        at += len(raw)
        ends.append(at)
        opcodes.add(row.opcode)
    return _Index(seqs, starts, ends, frozenset(opcodes), version)


# --------------------------------------------------------------------------- paged reads

INDEX_BYTES = 16 << 20  # indexes of archived streams kept in memory (1 KiB: ~40 events)
RANGE_BYTES = 1 << 20  # read from the object at once, at most (or one event)


class _Paged:
    """What both archives share: reading a stream a page at a time through its index.

    A subclass reads the whole object (:meth:`_fetch`, with its version) and a byte
    range of it (:meth:`_fetch_range`, ``None`` once the object is no longer the version
    indexed), and calls :meth:`_changed` when it writes a stream.
    """

    def __init__(self) -> None:
        self._indexes: OrderedDict[str, _Index] = OrderedDict()  # least recently used first
        self._index_bytes = 0
        self._loading: dict[str, asyncio.Task[_Index | None]] = {}
        self._one_load = asyncio.Semaphore(1)  # one whole object in memory at a time
        self._writes = 0  # puts so far: an index loaded across one is not kept

    async def _fetch(self, stream_id: str) -> tuple[bytes | memoryview, Hashable] | None:
        raise NotImplementedError

    async def _fetch_range(self, stream_id: str, start: int, end: int,
                           version: Hashable) -> bytes | memoryview | None:  # fmt: skip
        raise NotImplementedError

    def _changed(self, stream_id: str) -> None:
        """``stream_id`` is being written: forget its index."""
        self._writes += 1
        self._forget(stream_id)

    def _forget(self, stream_id: str) -> None:
        index = self._indexes.pop(stream_id, None)
        if index is not None:
            self._index_bytes -= index.nbytes

    async def read(self, stream_id: str, since: int, limit: int) -> list[Event] | None:
        for _ in range(3):
            index = await self._index(stream_id)
            if index is None:
                return None
            starts, ends = index.starts, index.ends
            first = bisect_right(index.seqs, since)
            last = min(len(index.seqs), first + max(0, limit))
            events: list[Event] = []
            while first < last:  # RANGE_BYTES of the object at a time (or one event)
                end = first + 1
                while end < last and ends[end] - starts[first] <= RANGE_BYTES:
                    end += 1
                base = starts[first]
                body = await self._fetch_range(stream_id, base, ends[end - 1], index.version)
                if body is None:  # written again since it was indexed
                    break
                view = memoryview(body)
                events += [_event(_row(view[starts[i] - base : ends[i] - base], stream_id))
                           for i in range(first, end)]  # fmt: skip
                first = end
            else:
                return events
            self._forget(stream_id)
        raise ArchiveError(f"the archived stream {stream_id} changes as it is read")

    async def opcodes(self, stream_id: str) -> frozenset[int] | None:
        index = await self._index(stream_id)
        return None if index is None else index.opcodes

    async def _index(self, stream_id: str) -> _Index | None:
        """The stream's index: remembered, or loaded once for every reader asking."""
        _check_stream_id(stream_id)
        index = self._indexes.get(stream_id)
        if index is not None:
            self._indexes.move_to_end(stream_id)
            return index
        task = self._loading.get(stream_id)
        if task is None:
            task = asyncio.create_task(self._load(stream_id), name="hub-archive-index")
            self._loading[stream_id] = task
            task.add_done_callback(partial(self._loaded, stream_id))
        # A reader that leaves (cancelled) does not cancel the load the others wait for.
        return await asyncio.shield(task)

    def _loaded(self, stream_id: str, task: asyncio.Task[_Index | None]) -> None:
        if self._loading.get(stream_id) is task:
            del self._loading[stream_id]
        if not task.cancelled():
            task.exception()  # retrieved, even when every reader has left

    async def _load(self, stream_id: str) -> _Index | None:
        writes = self._writes
        async with self._one_load:
            fetched = await self._fetch(stream_id)
            if fetched is None:
                return None
            body, version = fetched
            del fetched
            index = await asyncio.to_thread(index_events, stream_id, body, version)
            del body
        if writes == self._writes:  # no put meanwhile: what was read is still the object
            self._indexes[stream_id] = index
            self._index_bytes += index.nbytes
            while self._index_bytes > INDEX_BYTES and len(self._indexes) > 1:
                _, old = self._indexes.popitem(last=False)
                self._index_bytes -= old.nbytes
        return index

    async def _close_pages(self) -> None:
        """Stop the loads under way (awaited) and forget every index."""
        loading = list(self._loading.values())
        for task in loading:
            task.cancel()
        await asyncio.gather(*loading, return_exceptions=True)
        self._indexes.clear()
        self._index_bytes = 0


# --------------------------------------------------------------------------- local files


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync elsewhere
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalArchive(_Paged):
    """One ``{streamId}.json`` file per stream in ``root`` (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__()
        self.root = Path(root)
        self._closed = False

    def path_for(self, stream_id: str) -> Path:
        """The file of ``stream_id``; :class:`ValueError` for an invalid id."""
        return self.root / f"{_check_stream_id(stream_id)}.json"

    def _check_open(self) -> None:
        if self._closed:
            raise ArchiveError("the archive is closed")

    def _write_and_read(self, path: Path, body: bytes) -> bytes:
        self.root.mkdir(parents=True, exist_ok=True)
        # A leading dot: never the name of another stream's file (ids start alphanumeric).
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.root)
        return path.read_bytes()

    async def put(self, stream_id: str, events: Sequence[Event]) -> None:
        path = self.path_for(stream_id)
        body = encode_events(stream_id, events)
        self._check_open()
        self._changed(stream_id)
        try:
            stored = await asyncio.to_thread(self._write_and_read, path, body)
        except OSError as exc:
            raise ArchiveError(f"the archive cannot store {stream_id}") from exc
        if stored != body:
            raise ArchiveError(f"the archive's copy of {stream_id} differs from what was written")

    async def get(self, stream_id: str) -> list[Event] | None:
        path = self.path_for(stream_id)
        self._check_open()
        try:
            body = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ArchiveError(f"the archive cannot read {stream_id}") from exc
        return decode_events(stream_id, body)

    @staticmethod
    def _version(st: os.stat_result) -> Hashable:
        return (st.st_ino, st.st_size, st.st_mtime_ns)  # os.replace makes a new inode

    def _read_whole(self, path: Path) -> tuple[bytes, Hashable] | None:
        try:
            with path.open("rb") as f:
                version = self._version(os.fstat(f.fileno()))
                return f.read(), version
        except FileNotFoundError:
            return None

    def _read_range(self, path: Path, start: int, end: int, version: Hashable) -> bytes | None:
        try:
            with path.open("rb") as f:
                if self._version(os.fstat(f.fileno())) != version:
                    return None
                body = os.pread(f.fileno(), end - start, start)
        except FileNotFoundError:
            return None
        return body if len(body) == end - start else None

    async def _fetch(self, stream_id: str) -> tuple[bytes | memoryview, Hashable] | None:
        path = self.path_for(stream_id)
        self._check_open()
        try:
            return await asyncio.to_thread(self._read_whole, path)
        except OSError as exc:
            raise ArchiveError(f"the archive cannot read {stream_id}") from exc

    async def _fetch_range(self, stream_id: str, start: int, end: int,
                           version: Hashable) -> bytes | memoryview | None:  # fmt: skip
        path = self.path_for(stream_id)
        self._check_open()
        try:
            return await asyncio.to_thread(self._read_range, path, start, end, version)
        except OSError as exc:
            raise ArchiveError(f"the archive cannot read {stream_id}") from exc

    async def close(self) -> None:
        self._closed = True
        await self._close_pages()

    def __repr__(self) -> str:
        return f"LocalArchive({str(self.root)!r})"


# --------------------------------------------------------------------------- S3


def _s3_config(env: Mapping[str, str]) -> tuple[S3Config, bool]:
    """The client settings taken from the standard AWS variables, and whether to allow http."""
    config: S3Config = {}
    # obstore also reads AWS_* from the process environment itself, where an empty value
    # (e.g. AWS_ENDPOINT_URL_S3=) is not "unset" but an invalid setting: refuse it here.
    empty = sorted(k for k, v in env.items() if k.startswith("AWS_") and not v.strip())
    if empty:
        raise SettingsError(f"empty AWS setting(s): {', '.join(empty)}; unset them or fill them")
    if key_id := env.get("AWS_ACCESS_KEY_ID"):
        config["access_key_id"] = key_id
    if secret := env.get("AWS_SECRET_ACCESS_KEY"):
        config["secret_access_key"] = secret
    if token := env.get("AWS_SESSION_TOKEN"):
        config["session_token"] = token
    if region := env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"):
        config["region"] = region
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        config["endpoint"] = endpoint.rstrip("/")
        config["virtual_hosted_style_request"] = False
    return config, bool(endpoint and endpoint.lower().startswith("http://"))


class S3Archive(_Paged):
    """One object ``{prefix}/{streamId}.json`` per stream in an S3 (or S3-compatible) bucket.

    ``env`` defaults to ``os.environ``; obstore also reads any other ``AWS_*`` setting it
    knows from the process environment (e.g. web-identity or container credentials).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
        retry_timeout: float = 20.0,
    ) -> None:
        try:
            from obstore.store import S3Store
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise SettingsError(
                "an s3:// HUB_ARCHIVE_URL needs the s3 extra: pip install 'hub-streams[s3]'"
            ) from exc
        if not bucket:
            raise SettingsError("the archive URL names no bucket (s3://bucket/prefix)")
        super().__init__()
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        config, allow_http = _s3_config(os.environ if env is None else env)
        client: ClientConfig = {
            "timeout": timedelta(seconds=timeout),
            "connect_timeout": timedelta(seconds=connect_timeout),
            "allow_http": allow_http,
        }
        retry: RetryConfig = {
            "max_retries": max_retries,
            "retry_timeout": timedelta(seconds=retry_timeout),
        }
        self._store: S3Store | None = S3Store(
            bucket, config=config, client_options=client, retry_config=retry
        )

    def key_for(self, stream_id: str) -> str:
        """The object key of ``stream_id``; :class:`ValueError` for an invalid id."""
        name = f"{_check_stream_id(stream_id)}.json"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _client(self) -> S3Store:
        if self._store is None:
            raise ArchiveError("the archive is closed")
        return self._store

    async def _read(self, store: S3Store, key: str) -> bytes | None:
        import obstore

        try:
            result = await obstore.get_async(store, key)
            return bytes(await result.bytes_async())
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc):  # a missing bucket is a fault, not a missing stream
                raise ArchiveError(f"the archive bucket {self.bucket} does not exist") from exc
            return None

    async def put(self, stream_id: str, events: Sequence[Event]) -> None:
        import obstore

        key = self.key_for(stream_id)
        body = encode_events(stream_id, events)
        store = self._client()
        self._changed(stream_id)
        try:
            await obstore.put_async(
                store,
                key,
                body,
                attributes={"Content-Type": "application/json"},
                use_multipart=False,
            )
            stored = await self._read(store, key)
        except ArchiveError:
            raise
        except Exception as exc:  # obstore's errors, timeouts, refused connections
            raise ArchiveError(f"the archive cannot store {stream_id}") from exc
        if stored != body:
            raise ArchiveError(f"the archive's copy of {stream_id} differs from what was written")

    async def get(self, stream_id: str) -> list[Event] | None:
        key = self.key_for(stream_id)
        store = self._client()
        try:
            body = await self._read(store, key)
        except ArchiveError:
            raise
        except Exception as exc:  # obstore's errors, timeouts, refused connections
            raise ArchiveError(f"the archive cannot read {stream_id}") from exc
        return None if body is None else decode_events(stream_id, body)

    async def _get(self, stream_id: str, options: GetOptions | None,
                   version: Hashable = None) -> tuple[memoryview, Hashable] | None:  # fmt: skip
        """The object's bytes (``options``: a range of them) and its ETag; None when it is
        absent or its ETag is no longer ``version``."""
        import obstore

        key = self.key_for(stream_id)
        store = self._client()
        try:
            result = await obstore.get_async(store, key, options=options)
            etag = result.meta.get("e_tag") or result.meta.get("last_modified")
            if version is not None and etag != version:
                return None
            return memoryview(await result.bytes_async()), etag
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc):
                raise ArchiveError(f"the archive bucket {self.bucket} does not exist") from exc
            return None
        except Exception as exc:  # obstore's errors, timeouts, refused connections
            raise ArchiveError(f"the archive cannot read {stream_id}") from exc

    async def _fetch(self, stream_id: str) -> tuple[bytes | memoryview, Hashable] | None:
        return await self._get(stream_id, None)

    async def _fetch_range(self, stream_id: str, start: int, end: int,
                           version: Hashable) -> bytes | memoryview | None:  # fmt: skip
        got = await self._get(stream_id, {"range": (start, end)}, version)
        return None if got is None else got[0]

    async def close(self) -> None:
        # obstore has no explicit close: dropping the store releases its connection pool.
        self._store = None
        await self._close_pages()

    def __repr__(self) -> str:
        return f"S3Archive(bucket={self.bucket!r}, prefix={self.prefix!r})"


# --------------------------------------------------------------------------- factory


def open_archive(url: str, *, env: Mapping[str, str] | None = None) -> Archive:
    """The archive named by ``HUB_ARCHIVE_URL``; no I/O happens until the first call.

    ``file:///abs/path`` and ``file://relative/path`` (also ``file:path``) give a
    :class:`LocalArchive`; ``s3://bucket/prefix`` an :class:`S3Archive` configured from
    ``env`` (default ``os.environ``). Anything else raises
    :class:`~hub.config.SettingsError` (a :class:`ValueError`).
    """
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if sep and scheme == "file":
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise SettingsError(f"the archive URL {url!r} names no directory")
        return LocalArchive(Path(path))
    if sep and scheme == "s3" and rest.startswith("//"):
        bucket, _, prefix = rest[2:].partition("/")
        if not bucket:
            raise SettingsError(f"the archive URL {url!r} names no bucket")
        return S3Archive(bucket, prefix, env=env)
    raise SettingsError(f"unsupported archive URL {url!r}: use file:///path or s3://bucket/prefix")
