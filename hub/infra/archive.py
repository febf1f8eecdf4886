"""The archive of finished streams (seed Step 11, docs/protocol.md §1 ``HUB_ARCHIVE_URL``).

When an order is done its stream is written to the archive as one object,
``{prefix}/{streamId}.json``: a JSON array of the stream's events, each exactly
:attr:`hub.events.Event.json` (the docs/protocol.md §3 fields, so archived events keep
their ``seq`` and ``pos``). Only after :meth:`Archive.put` has returned, which
means the object was written *and read back byte for byte*, may the caller delete
the events from the streams DB. :meth:`Archive.get` turns the object back into
:class:`~hub.events.Event` objects equal to the originals, so
``GET /api/streams/{id}`` answers the same for an archived stream.

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
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from hub.config import SettingsError
from hub.errors import Unavailable
from hub.events import STREAM_ID_RE, Event

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config, S3Store

__all__ = [
    "Archive",
    "ArchiveError",
    "LocalArchive",
    "S3Archive",
    "decode_events",
    "encode_events",
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
        """The archived events of ``stream_id`` in order, or ``None`` when absent."""
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


def _int(obj: Mapping[str, Any], key: str, stream_id: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _corrupt(stream_id, f"{key} is not an integer")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, stream_id: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise _corrupt(stream_id, f"{key} is not a string or null")
    return value


def _str(obj: Mapping[str, Any], key: str, stream_id: str) -> str:
    value = _opt_str(obj, key, stream_id)
    if value is None:
        raise _corrupt(stream_id, f"{key} is missing")
    return value


def _decode_event(obj: object, stream_id: str) -> Event:
    if not isinstance(obj, dict):
        raise _corrupt(stream_id, "an element is not an object")
    if obj.get("streamId") != stream_id:
        raise _corrupt(stream_id, f"an event of stream {obj.get('streamId')!r}")
    delta = obj.get("delta")
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not math.isfinite(delta):
        raise _corrupt(stream_id, "delta is not a finite number")
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise _corrupt(stream_id, "payload is not an object")
    return Event(
        id=_str(obj, "id", stream_id),
        stream_id=stream_id,
        seq=_int(obj, "seq", stream_id),
        pos=_int(obj, "pos", stream_id),
        opcode=_int(obj, "opcode", stream_id),
        node_id=_opt_str(obj, "nodeId", stream_id),
        point_id=_opt_str(obj, "pointId", stream_id),
        delta=float(delta),
        # The same encoder as hub.events.parse_draft, so Event.json round-trips exactly.
        payload=msgspec.json.encode(payload).decode(),
        ts=_str(obj, "ts", stream_id),
    )


def decode_events(stream_id: str, body: bytes) -> list[Event]:
    """Parse an archive object back into events; :class:`ArchiveError` if it is corrupt."""
    _check_stream_id(stream_id)
    try:
        items = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _corrupt(stream_id, "not JSON") from exc
    if not isinstance(items, list):
        raise _corrupt(stream_id, "not a JSON array")
    return [_decode_event(item, stream_id) for item in items]


# --------------------------------------------------------------------------- local files


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync elsewhere
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalArchive:
    """One ``{streamId}.json`` file per stream in ``root`` (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
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

    async def close(self) -> None:
        self._closed = True

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


class S3Archive:
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
                "an s3:// HUB_ARCHIVE_URL needs the s3 extra: pip install 'hub[s3]'"
            ) from exc
        if not bucket:
            raise SettingsError("the archive URL names no bucket (s3://bucket/prefix)")
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

    async def close(self) -> None:
        # obstore has no explicit close: dropping the store releases its connection pool.
        self._store = None

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
