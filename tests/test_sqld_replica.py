"""A sqld primary and a sqld read replica under the hub (issue 20, point 3).

The primary is started with ``--grpc-listen-addr``; the replica with ``--primary-grpc-url
http://…`` (plain gRPC: sqld's TLS there is opt-in, ``--grpc-tls``/``--primary-grpc-tls``)
pointing at a :class:`Gate`, a TCP relay to the primary's gRPC port that the test can
close and open: closed, the replica receives no more of the primary's WAL and lags, while
it goes on answering reads from what it has. That is a replica that lags on cue; stopping
the replica process (SIGSTOP) is one that hangs, and stopping it for good one that is down.

The store's reads follow :mod:`hub.infra.store.replica`: pages from the replica as far as
they are complete, the rest from the primary, the primary alone while the replica fails.
Here that is checked on :class:`~hub.infra.store.replica.ReplicaStore` itself (the
conformance suite of :mod:`tests.test_store`, the pages of a replica that lags, one that
hangs or is down) and on hubs with ``HUB_STREAMS_DB`` on the primary and
``HUB_STREAMS_READ_DB`` on the replica: GETs and pages are read on the replica (its own
query count grows, it sends nothing on to the primary), and subscribers on two instances
linked by Redis get every event exactly once and in order while the replica lags, hangs
and comes back, and while Redis drops their instance's messages (so that gaps are
repaired from the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hub.config import Settings, SettingsError
from hub.infra.store import StreamArchived, open_store
from hub.infra.store import replica as replica_module
from hub.infra.store.remote import RemoteStore
from hub.infra.store.replica import REPLICA_TIMEOUT_S, ReplicaStore
from tests.conftest import HubProcess, RedisServer, auth, timeout
from tests.sqld import Sqld, query
from tests.test_redis import (
    KITCHEN,
    PLATFORM,
    Log,
    Sub,
    eventually,
    expect_all,
    health_of,
    http,
    is_ok,
    new_sid,
    note,
    order,
    settle,
)
from tests.test_store import (  # noqa: F401  (the conformance suite, run here on a replica)
    STREAM,
    Commits,
    ev,
    order_create,
    task_assign,
    test_a_membership_ends_at_task_unassign_and_starts_again,
    test_append_and_read_round_trip,
    test_append_whose_caller_went_away_still_commits_and_is_handed_on,
    test_appends_committed_together_get_what_each_would_alone,
    test_batch_is_all_or_nothing,
    test_batch_mixing_retry_and_new_commits_only_new,
    test_expected_seq_commits_only_onto_the_stream_it_was_decided_on,
    test_find_streams,
    test_first_event_retry_is_returned_not_refused,
    test_first_on_non_empty_stream_is_refused,
    test_listener_hears_every_commit_in_order_before_the_caller,
    test_other_content_under_same_id_conflicts,
    test_read_inbox_from_membership_on,
    test_read_stream_since_and_limit,
    test_retry_returns_stored_event,
    test_seq_gap_free_under_concurrent_appenders,
    test_stream_info_members_and_last_seq,
    test_stream_opcodes,
)

ALI = auth("ali", "customer")

# What a replica counts in its metrics: statements it ran itself, and those it sent on to
# its primary (a write, or what it cannot run; the hub sends it none).
QUERIES = "libsql_server_query_count"
DELEGATED = 'libsql_server_write_requests_delegated{namespace="default"}'


# -- a gate between the replica and its primary ----------------------------------------------


class Gate:
    """A TCP relay from a free loopback port to ``target``, for the replica's gRPC
    connection to its primary. :meth:`close` holds every byte in both directions (the
    replica then lags: it gets none of the primary's new frames); :meth:`open` lets them
    through again, those held first."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._passing = threading.Event()
        self._passing.set()
        self._done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="gate").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """From now on nothing more passes (a chunk being passed on is finished first)."""
        with self._lock:
            self._passing.clear()

    def open(self) -> None:
        self._passing.set()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self._sockets += [downstream, upstream]
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                while True:
                    with self._lock:
                        if self._done:
                            return
                        if self._passing.is_set():
                            dst.sendall(data)
                            break
                    self._passing.wait(0.1)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        with self._lock:
            self._done = True
            self._passing.set()
            self._server.close()
            for s in self._sockets:
                # shutdown first: close() alone leaves a socket a pump thread is blocked
                # reading from open (no FIN), and sqld's graceful exit waits on that stream.
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


@dataclass
class Cluster:
    """A sqld primary and a sqld replica of it, linked through a :class:`Gate`."""

    primary: Sqld
    replica: Sqld
    gate: Gate

    def replica_has(self, sql: str, expected: object) -> bool:
        """Whether the replica answers ``expected`` itself. A replica that has not applied
        any of the primary's frames yet sends every statement on to the primary (it counts
        them as delegated): such an answer is not the replica's."""
        try:
            before = self.replica.metrics().get(DELEGATED, 0)
            rows = query(self.replica.http_url, sql)
            return rows == expected and self.replica.metrics().get(DELEGATED, 0) == before
        except (OSError, RuntimeError):
            return False

    async def replica_catches_up(self, seconds: float = 15) -> None:
        """Until the replica holds every event and stream row the primary holds."""
        sql = "SELECT COUNT(*), COALESCE(MAX(pos), 0) FROM events"
        want = query(self.primary.http_url, sql)
        rows = "SELECT COUNT(*), COALESCE(SUM(lastSeq), 0) FROM streams"
        want_rows = query(self.primary.http_url, rows)
        await eventually(lambda: self.replica_has(sql, want) and self.replica_has(rows, want_rows),
                         seconds, lambda: f"the replica never caught up with {want}")  # fmt: skip

    def pause_replica(self) -> None:
        assert self.replica.proc is not None
        self.replica.proc.send_signal(signal.SIGSTOP)

    def resume_replica(self) -> None:
        proc = self.replica.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A running primary and replica (metrics on, to count where statements run)."""
    grpc = socket.create_server(("127.0.0.1", 0))
    grpc_port: int = grpc.getsockname()[1]
    grpc.close()
    primary = Sqld(tmp_path / "sqld-primary", metrics=True,
                   args=["--grpc-listen-addr", f"127.0.0.1:{grpc_port}"])  # fmt: skip
    with contextlib.ExitStack() as stack:  # every step of the teardown runs, whatever fails
        stack.callback(primary.stop)
        primary.start()
        gate = Gate(grpc_port)
        stack.callback(gate.stop)
        replica = Sqld(tmp_path / "sqld-replica", metrics=True,
                       args=["--primary-grpc-url", gate.url])  # fmt: skip
        stack.callback(replica.stop)
        stack.callback(gate.open)
        cluster = Cluster(primary, replica, gate)
        stack.callback(cluster.resume_replica)
        replica.start()
        yield cluster


async def schema_replicated(cluster: Cluster) -> None:
    await eventually(lambda: cluster.replica_has("SELECT COUNT(*) FROM members", [(0,)]), 15,
                     lambda: "the replica never got the schema")  # fmt: skip


@contextlib.asynccontextmanager
async def replica_store(cluster: Cluster, transport: str = "ws",
                        commits: Commits | None = None) -> AsyncIterator[ReplicaStore]:  # fmt: skip
    """A ReplicaStore on the cluster (the primary over ws, the replica over ``transport``),
    opened once the replica holds the schema the primary made."""
    store = ReplicaStore(
        RemoteStore(cluster.primary.ws_url),
        RemoteStore(cluster.replica.url(transport), read_only=True, timeout=REPLICA_TIMEOUT_S),
    )
    await store.open(commits)
    try:
        await schema_replicated(cluster)
        yield store
    finally:
        await store.close()


# -- the setting --------------------------------------------------------------------------------


def test_the_read_replica_setting(tmp_path: Path) -> None:
    """HUB_STREAMS_READ_DB: unset, one store as before; set, a ReplicaStore over the two
    URLs; refused (one line) unless both it and HUB_STREAMS_DB are remote."""
    base = {"HUB_DATA_DIR": str(tmp_path), "HUB_SECRET": "s" * 32}
    primary, replica = "ws://10.0.0.5:8080", "http://10.0.0.6:8080"
    settings = Settings.from_env({**base, "HUB_STREAMS_DB": primary})
    assert settings.streams_read_db is None
    assert isinstance(open_store(settings.streams_db, read_url=settings.streams_read_db),
                      RemoteStore)  # fmt: skip
    settings = Settings.from_env({**base, "HUB_STREAMS_DB": primary,
                                  "HUB_STREAMS_READ_DB": f" {replica} "})  # fmt: skip
    assert settings.streams_read_db == replica
    store = open_store(settings.streams_db, auth_token="t", read_url=settings.streams_read_db)
    assert isinstance(store, ReplicaStore)
    assert (store.primary.url, store.replica.url) == (primary, replica)
    assert (store.primary.read_only, store.replica.read_only) == (False, True)
    assert store.replica.timeout == REPLICA_TIMEOUT_S
    for streams, read in ((None, replica), (primary, f"file:{tmp_path / 'r.db'}"),
                          (primary, "redis://10.0.0.6")):  # fmt: skip
        env = {**base, "HUB_STREAMS_READ_DB": read}
        if streams is not None:
            env["HUB_STREAMS_DB"] = streams
        with pytest.raises(SettingsError, match="HUB_STREAMS_READ_DB"):
            Settings.from_env(env)


# -- the conformance suite on a replica --------------------------------------------------------
# The tests imported from tests.test_store above run here with this ``store``: the replica
# over ws and lagging from the start (the gate closed once it holds the schema: every page
# is the replica's empty one, completed by the primary), and over http and live (it follows
# the primary within milliseconds: pages come whole from the replica, or partly from each).
# Not imported: test_delete_keeps_seq_and_never_reuses_pos and
# test_archived_stream_refuses_appends, which read an archived stream right after its
# deletion: a replica that has not applied the deletion yet still serves the deleted events
# (see the module docstring of hub.infra.store.replica). test_archived_stream_after_delete
# below checks what it serves, and the rest of what those two check.


@pytest.fixture
def commits() -> Commits:
    return Commits()


@pytest.fixture(params=["ws-lagging", "http-live"])
async def store(request: pytest.FixtureRequest, cluster: Cluster,
                commits: Commits) -> AsyncIterator[ReplicaStore]:  # fmt: skip
    transport, mode = request.param.split("-")
    async with replica_store(cluster, transport, commits) as s:
        if mode == "lagging":
            cluster.gate.close()
        yield s
        # Every page was read on the replica first (none went to the primary whole).
        assert s.reads["primary"] == 0, s.reads


# -- the store: where pages come from ----------------------------------------------------------


async def test_pages_of_a_lagging_replica_are_completed_from_the_primary(
    cluster: Cluster,
) -> None:
    """A replica 10 events behind: a full page of what it has is its own (the primary is
    not asked); a short page gets what it lacks from the primary, stream and inbox alike;
    once it caught up, the primary only confirms there is nothing more."""
    async with replica_store(cluster) as store:
        await store.append(STREAM, [order_create("e1")], first=True)
        await store.append(STREAM, [ev(f"e{i}") for i in range(2, 11)])
        await cluster.replica_catches_up()
        delegated = cluster.replica.metrics().get(DELEGATED, 0)
        cluster.gate.close()
        later = await store.append(STREAM, [task_assign("e11", "d1"),
                                            *(ev(f"e{i}") for i in range(12, 21))])  # fmt: skip
        committed = await store.primary.read_stream(STREAM, 0, 100)
        assert [e.seq for e in committed] == list(range(1, 21))
        assert query(cluster.replica.http_url, "SELECT COUNT(*) FROM events") == [(10,)]
        replica_queries = cluster.replica.metrics().get(QUERIES, 0)

        store.reads.clear()
        assert await store.read_stream(STREAM, 2, 5) == committed[2:7]  # full, the replica's
        assert store.reads == {"replica": 1}
        assert await store.read_stream(STREAM, 7, 6) == committed[7:13]  # 8-10, then 11-13
        assert await store.read_stream(STREAM, 0, 100) == committed
        assert await store.read_stream(STREAM, 15, 100) == committed[15:]  # none on the replica
        assert store.reads == {"replica": 1, "completed": 3}

        by_pos = await store.primary.read_inbox("c1", 0, 100)
        assert await store.read_inbox("c1", 0, 100) == by_pos == committed
        assert await store.read_inbox(None, by_pos[3].pos, 4) == committed[4:8]
        driver = await store.read_inbox("d1", 0, 100)
        assert driver == committed[10:]
        assert driver[0] == later.events[0]
        assert store.reads == {"replica": 2, "completed": 5}
        assert cluster.replica.metrics().get(QUERIES, 0) >= replica_queries + 7

        cluster.gate.open()
        await cluster.replica_catches_up()
        store.reads.clear()
        assert await store.read_stream(STREAM, 0, 100) == committed
        assert await store.read_inbox("d1", 0, 100) == committed[10:]
        assert store.reads == {"replica": 2}  # confirmed by an empty answer of the primary
        assert cluster.replica.metrics().get(DELEGATED, 0) == delegated  # nothing sent on


async def test_a_stuck_or_down_replica_sends_pages_to_the_primary(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica that hangs (SIGSTOP) costs one read REPLICA_TIMEOUT_S, then pages come
    from the primary at once; the replica is tried again after REPLICA_RETRY_S and used
    once it answers; one that is down (connection refused) is skipped at once."""
    monkeypatch.setattr(replica_module, "REPLICA_RETRY_S", 0.5)
    async with replica_store(cluster) as store:
        result = await store.append(STREAM, [order_create("e1"), ev("e2")], first=True)
        await cluster.replica_catches_up()
        store.reads.clear()

        cluster.pause_replica()
        t0 = time.monotonic()
        assert await store.read_stream(STREAM, 0, 100) == result.events
        stuck = time.monotonic() - t0
        assert REPLICA_TIMEOUT_S <= stuck < REPLICA_TIMEOUT_S + timeout(2), stuck
        t0 = time.monotonic()
        for _ in range(5):  # left alone: no more waiting on it
            assert await store.read_inbox("c1", 0, 100) == result.events
        assert time.monotonic() - t0 < timeout(1)
        assert store.reads == {"primary": 6}
        more = await store.append(STREAM, [ev("e3")])  # writes never touched the replica

        cluster.resume_replica()
        await asyncio.sleep(0.6)  # past REPLICA_RETRY_S
        await eventually(lambda: cluster.replica_has("SELECT COUNT(*) FROM events", [(3,)]), 10,
                         lambda: "the replica did not catch up after SIGCONT")  # fmt: skip
        store.reads.clear()
        assert await store.read_stream(STREAM, 0, 2) == result.events
        assert await store.read_stream(STREAM, 0, 100) == result.events + more.events
        assert store.reads == {"replica": 2}

        cluster.replica.stop()
        t0 = time.monotonic()
        assert await store.read_stream(STREAM, 0, 100) == result.events + more.events
        assert await store.read_inbox(None, 0, 100) == result.events + more.events
        assert time.monotonic() - t0 < timeout(1)
        assert store.reads == {"replica": 2, "primary": 2}
        await store.ping()  # the store is healthy: its primary answers


async def test_archived_stream_after_delete(cluster: Cluster) -> None:
    """What a replica that has not applied a deletion serves: the deleted events, those the
    archive holds (never others); the stream's row and new positions come from the primary;
    once the replica applied the deletion, nothing."""
    async with replica_store(cluster) as store:
        first = await store.append(STREAM, [order_create("e1"), ev("e2"), ev("e3")], first=True)
        await cluster.replica_catches_up()
        cluster.gate.close()
        assert await store.delete_stream(STREAM) == 3
        info = await store.stream_info(STREAM)
        assert info is not None
        assert (info.archived, info.last_seq) == (True, 3)
        with pytest.raises(StreamArchived):
            await store.append(STREAM, [ev("e4")])
        with pytest.raises(StreamArchived):
            await store.append(STREAM, [order_create("e5")], first=True)
        assert await store.read_stream(STREAM, 0, 100) == first.events
        other = await store.append("ord-2", [ev("f1")])
        assert other.events[0].pos > max(e.pos for e in first.events)
        cluster.gate.open()
        await cluster.replica_catches_up()
        assert await store.read_stream(STREAM, 0, 100) == []
        assert await store.read_inbox("c1", 0, 100) == []
        assert await store.read_inbox(None, 0, 100) == other.events
        info = await store.stream_info(STREAM)
        assert info is not None
        assert info.last_seq == 3


# -- hubs on the primary and the replica -------------------------------------------------------


def hub_env(cluster: Cluster, read_transport: str = "ws") -> dict[str, str]:
    return {"HUB_STREAMS_DB": cluster.primary.ws_url,
            "HUB_STREAMS_READ_DB": cluster.replica.url(read_transport)}  # fmt: skip


async def test_hub_reads_pages_on_the_replica_and_writes_on_the_primary(
    cluster: Cluster, hub_factory: Callable[..., HubProcess], tmp_path: Path
) -> None:
    """Appends through the hub land on the primary; GETs read their events on the replica
    (its query count grows by a statement per page; nothing is sent on to the primary);
    with the replica lagging a GET still answers every acknowledged event; with the replica
    stopped, GETs and appends go on, each within the deadlines, and /healthz stays 200."""
    hub = hub_factory(tmp_path / "data", hub_env(cluster, "http"))
    await schema_replicated(cluster)
    sid = new_sid()
    async with http(hub) as c:
        log = Log()
        await log.append(c, sid, [order("ali")])
        for i in range(20):
            await log.append(c, sid, [note(i)])
        assert query(cluster.primary.http_url, "SELECT COUNT(*) FROM events WHERE streamId = ?",
                     sid) == [(21,)]  # fmt: skip
        await cluster.replica_catches_up()

        before = cluster.replica.metrics()
        for _ in range(10):
            r = await c.get(f"/api/streams/{sid}", params={"limit": 50}, headers=PLATFORM)
            assert r.status_code == 200, r.text
            assert r.json()["events"] == log.stream(sid)
        after = cluster.replica.metrics()
        assert after.get(QUERIES, 0) >= before.get(QUERIES, 0) + 10, (before, after)
        assert after.get(DELEGATED, 0) == before.get(DELEGATED, 0)  # nothing sent on

        cluster.gate.close()  # lagging: what the hub acknowledged is read all the same
        for i in range(20, 25):
            await log.append(c, sid, [note(i)])
            r = await c.get(f"/api/streams/{sid}", params={"since": 15}, headers=ALI)
            assert r.status_code == 200, r.text
            assert r.json()["events"] == log.stream(sid)[15:]
        assert query(cluster.replica.http_url, "SELECT COUNT(*) FROM events") == [(21,)]
        cluster.gate.open()

        cluster.replica.stop()  # down: every read from the primary
        for i in range(25, 30):
            t0 = time.monotonic()
            await log.append(c, sid, [note(i)])
            r = await c.get(f"/api/streams/{sid}", headers=PLATFORM)
            assert r.status_code == 200, r.text
            assert r.json()["events"] == log.stream(sid)
            assert time.monotonic() - t0 < REPLICA_TIMEOUT_S + timeout(2)
        assert (await c.get("/healthz")).status_code == 200


@pytest.fixture
def two_hubs(cluster: Cluster, redis_server: RedisServer,
             hub_factory: Callable[..., HubProcess], tmp_path: Path
             ) -> tuple[HubProcess, HubProcess]:  # fmt: skip
    """Hubs A and B on the primary and the replica, linked by Redis."""
    env = {**hub_env(cluster), "HUB_REDIS_URL": redis_server.url}
    a = hub_factory(tmp_path / "data", env)
    b = hub_factory(tmp_path / "data", env)
    for hub in (a, b):  # until the broker is linked too
        deadline = time.monotonic() + timeout(10)
        while not is_ok(got := health_of(hub)):
            assert time.monotonic() < deadline, f"hub {hub.port} never linked: {got}"
            time.sleep(0.05)
    return a, b


@pytest.mark.slow
async def test_subscribers_miss_nothing_while_the_replica_lags_hangs_and_returns(
    cluster: Cluster, redis_server: RedisServer, two_hubs: tuple[HubProcess, HubProcess]
) -> None:
    """Subscribers on hubs A and B (a stream, a kitchen's inbox, the platform's inbox: the
    inboxes read the log at every event, Redis being unordered; the stream sockets when
    Redis drops their instance's messages) while writers on both append.

    1. The replica lags again and again (the gate closed a while), Redis drops every
       pub/sub connection now and then, and sockets open from the start (a replay) while
       it lags. At the end of it the replica lags until every socket has every event: the
       last events are written and Redis drops every connection with the gate closed.
    2. The replica hangs (SIGSTOP) while events are written, Redis drops every connection
       and a socket opens from the start; then it comes back (SIGCONT).

    Every subscriber gets every acknowledged event exactly once, in order, and the
    replica answered the bulk of the reads without sending anything on to the primary.
    """
    a, b = two_hubs
    seed = int(os.environ.get("HUB_TEST_SEED") or random.randrange(1 << 30))
    print(f"HUB_TEST_SEED={seed}")
    rng = random.Random(seed)
    sid = new_sid()
    log = Log()
    inboxes: dict[str, set[str] | None] = {}
    await schema_replicated(cluster)
    replica_queries = cluster.replica.metrics().get(QUERIES, 0)
    delegated = cluster.replica.metrics().get(DELEGATED, 0)
    chaos: list[str] = []

    async def drop_pubsub() -> None:
        killed = await asyncio.to_thread(redis_server.command, "CLIENT", "KILL", "TYPE", "pubsub")
        chaos.append(f"killed {killed} pubsub")

    def on_replica() -> int:
        [(count,)] = query(cluster.replica.http_url, "SELECT COUNT(*) FROM events")
        assert isinstance(count, int)
        return count

    async with http(a) as ca, http(b) as cb, AsyncExitStack() as stack:
        await log.append(ca, sid, [order("ali")])
        subs: list[Sub] = []

        async def subscribe(name: str, hub: HubProcess, path: str, who: dict[str, str]) -> None:
            inboxes[name] = None if "stream" not in name else {sid}
            subs.append(await stack.enter_async_context(Sub(name, hub, path, who)))

        for at, hub in (("A", a), ("B", b)):
            await subscribe(f"stream@{at}", hub, f"/ws/streams/{sid}", ALI)
            await subscribe(f"kitchen@{at}", hub, "/ws/inbox", KITCHEN)
            await subscribe(f"platform@{at}", hub, "/ws/inbox", PLATFORM)

        # 1. Lagging.
        writing = True

        async def writer(c: httpx.AsyncClient, w: str) -> None:
            for i in range(100):
                await log.append(c, sid, [note(i, w=w)])
                await asyncio.sleep(rng.uniform(0, 0.03))

        async def lagging() -> None:
            rounds = 0
            while writing:
                rounds += 1
                cluster.gate.close()
                chaos.append("gate closed")
                await asyncio.sleep(rng.uniform(0.1, 0.4))
                if rounds % 3 == 1:
                    n = len(subs)
                    await subscribe(f"stream{n}@B", b, f"/ws/streams/{sid}", ALI)
                    await subscribe(f"platform{n}@A", a, "/ws/inbox", PLATFORM)
                if rounds % 2 == 0:
                    await drop_pubsub()
                cluster.gate.open()
                chaos.append("gate open")
                await asyncio.sleep(rng.uniform(0.02, 0.2))

        chaos_task = asyncio.create_task(lagging())
        try:
            await asyncio.wait_for(asyncio.gather(
                writer(ca, "a0"), writer(ca, "a1"), writer(cb, "b0"), writer(cb, "b1"),
            ), timeout(90))  # fmt: skip
        finally:
            writing = False
            await chaos_task
        cluster.gate.close()
        await drop_pubsub()
        for i in range(10):
            await log.append(ca if i % 2 else cb, sid, [note(1000 + i)])
        await subscribe("last-stream@B", b, f"/ws/streams/{sid}", ALI)
        await subscribe("last-kitchen@A", a, "/ws/inbox", KITCHEN)
        await settle(subs, log, inboxes, 30)
        assert on_replica() <= len(log.events) - 10, (on_replica(), len(log.events))
        expect_all(subs, log, inboxes)
        cluster.gate.open()
        await cluster.replica_catches_up()

        # 2. Hanging: a read waits REPLICA_TIMEOUT_S for it, then every read goes to the
        # primary for REPLICA_RETRY_S.
        cluster.pause_replica()
        chaos.append("SIGSTOP")
        await drop_pubsub()
        for i in range(20):
            await log.append(ca if i % 2 else cb, sid, [note(2000 + i)])
            await asyncio.sleep(0.05)
        await subscribe("stopped-stream@A", a, f"/ws/streams/{sid}", ALI)
        await settle(subs, log, inboxes, 30)
        cluster.resume_replica()
        chaos.append("SIGCONT")
        for i in range(5):
            await log.append(ca if i % 2 else cb, sid, [note(3000 + i)])
        await settle(subs, log, inboxes, 30)

    print(f"chaos: {chaos}")
    expect_all(subs, log, inboxes)
    assert len(subs) > 10
    assert cluster.replica.metrics().get(QUERIES, 0) > replica_queries + 100
    assert cluster.replica.metrics().get(DELEGATED, 0) == delegated
    for hub in (a, b):  # the hang was seen, and put up with
        assert "the streams DB's read replica failed" in hub.log(), hub.log()[-2000:]
