"""Hub instances linked through a real multi-shard Redis Cluster with sharded pub/sub
(``HUB_REDIS_SHARDED=1``): channels spread over the masters by hash slot, events reach the
other instance exactly once and in order, and killed pub/sub connections, a stopped master
or a migrated slot lose nothing.

The module starts one real 3-master cluster (three ``redis-server --cluster-enabled yes``
processes joined by ``redis-cli --cluster create``, no replicas) and stops it at the end;
every test starts two hubs (A and B) on one streams DB file, both given the URL of one
node: A finds out that it is a cluster (``INFO cluster``), B is told (``HUB_REDIS_CLUSTER=1``).
Stream ids are picked so that their channels land on different masters, and where each
channel is subscribed is checked on every node (``CLUSTER KEYSLOT``, ``PUBSUB
SHARDCHANNELS``). Helpers (subscribers, the log of acknowledged events, exactly-once
checks) come from ``tests/test_redis.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import HubProcess, RedisServer, auth, timeout
from tests.test_redis import (
    KITCHEN,
    PLATFORM,
    RESTAURANT,
    Log,
    Sub,
    eventually,
    expect_all,
    health,
    health_becomes,
    health_of,
    http,
    is_ok,
    metrics,
    new_sid,
    note,
    order,
    percentiles,
    settle,
)

PREFIX = "hub:"


def ephemeral_low() -> int:
    """The first port the kernel hands out to outgoing connections (32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free too, both below the kernel's
    ephemeral range where it allows (20000 to 22767 by default): a port checked free can
    still be taken before redis-server binds it, and outgoing connections (many, with the
    suite on two workers) take ephemeral ports; a node whose bus port was taken exits and
    leaves the cluster without a master."""
    top = ephemeral_low() - 10000
    low, high = (20000, top) if top - 20000 >= 500 else (20000, 55000)
    pick = random.SystemRandom()  # not the global generator, which a test may seed
    while True:
        port = pick.randrange(low, high)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


class ClusterNode(RedisServer):
    """One cluster-enabled ``redis-server``; its ``nodes-PORT.conf`` survives a restart."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.port = cluster_port()
        self.log_path = directory / f"redis-{self.port}.log"

    def extra_args(self) -> list[str]:
        return ["--cluster-enabled", "yes",
                "--cluster-config-file", str(self.dir / f"nodes-{self.port}.conf")]  # fmt: skip

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def state(self) -> str:
        info = self.command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return dict(line.split(":", 1) for line in text.split())["cluster_state"]

    def shard_channels(self) -> dict[str, int]:
        """The shard channels named hub:* subscribed on this node, with subscriber counts."""
        names = self.command("PUBSUB", "SHARDCHANNELS", PREFIX + "*")
        assert isinstance(names, list)
        if not names:
            return {}
        reply = self.command("PUBSUB", "SHARDNUMSUB", *names)
        assert isinstance(reply, list | dict)
        items = list(reply.items()) if isinstance(reply, dict) else list(
            zip(reply[::2], reply[1::2], strict=True))  # fmt: skip
        return {n.decode(): int(c) for n, c in items}

    def plain_channels(self) -> dict[str, int]:
        names = self.command("PUBSUB", "CHANNELS", PREFIX + "*")
        assert isinstance(names, list)
        reply = self.command("PUBSUB", "NUMSUB", *names) if names else []
        assert isinstance(reply, list | dict)
        items = list(reply.items()) if isinstance(reply, dict) else list(
            zip(reply[::2], reply[1::2], strict=True))  # fmt: skip
        return {n.decode(): int(c) for n, c in items}


class Cluster:
    """A real Redis Cluster of three masters (no replicas) on free ports."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.nodes = [ClusterNode(directory) for _ in range(masters)]

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        done = subprocess.run(
            [cli, "--cluster", "create", *(n.name for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, timeout=timeout(60), check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
        self.wait_ok()
        return self

    def wait_ok(self, seconds: float = 30) -> None:
        """Until every node says cluster_state:ok and agrees on who owns every slot."""
        deadline = time.monotonic() + timeout(seconds)
        while True:
            try:
                maps = {tuple(sorted(self.owners_seen_by(n).items())) for n in self.nodes}
                if len(maps) == 1 and all(n.state() == "ok" for n in self.nodes):
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, "the cluster never became ok"
            time.sleep(0.05)

    def owners_seen_by(self, node: ClusterNode) -> dict[int, int]:
        """{first slot of a range: port of its master}, as ``node`` sees the slot map."""
        reply = node.command("CLUSTER", "SLOTS")
        assert isinstance(reply, list)
        return {int(r[0]): int(r[2][1]) for r in reply}

    def owner(self, slot: int) -> ClusterNode:
        reply = self.nodes[0].command("CLUSTER", "SLOTS")
        assert isinstance(reply, list)
        port = next(int(r[2][1]) for r in reply if int(r[0]) <= slot <= int(r[1]))
        return next(n for n in self.nodes if n.port == port)

    def slot(self, channel: str) -> int:
        got = self.nodes[0].command("CLUSTER", "KEYSLOT", channel)
        assert isinstance(got, int)
        return got

    def where(self, channel: str) -> ClusterNode:
        return self.owner(self.slot(channel))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One real 3-master Redis Cluster for the module, stopped at the end."""
    c = Cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("HUB_TEST_SEED") or random.randrange(1 << 32))
    print(f"HUB_TEST_SEED={seed}")
    return random.Random(seed)


@dataclass
class Pair:
    """Hubs A and B linked through the cluster, both given the URL of its first node."""

    cluster: Cluster
    a: HubProcess
    b: HubProcess


@pytest.fixture
def pair(cluster: Cluster, hub_factory: Callable[..., HubProcess], tmp_path: Path) -> Pair:
    cluster.wait_ok()
    url = cluster.nodes[0].url
    a = hub_factory(tmp_path / "data", {"HUB_REDIS_URL": url, "HUB_REDIS_SHARDED": "1"})
    b = hub_factory(tmp_path / "data", {"HUB_REDIS_URL": url, "HUB_REDIS_SHARDED": "1",
                                        "HUB_REDIS_CLUSTER": "1"})  # fmt: skip
    for hub in (a, b):  # healthy is not enough: wait until the broker is connected
        deadline = time.monotonic() + timeout(10)
        while not is_ok(got := health_of(hub)):
            assert time.monotonic() < deadline, f"hub {hub.port} never linked: {got}"
            time.sleep(0.02)
    return Pair(cluster, a, b)


def sids_on_every_master(cluster: Cluster) -> list[str]:
    """One new stream id per master, its channel's slot owned by that master."""
    found: dict[int, str] = {}
    deadline = time.monotonic() + timeout(10)
    while len(found) < len(cluster.nodes):
        if time.monotonic() >= deadline:
            seen = cluster.owners_seen_by(cluster.nodes[0])
            raise AssertionError(f"a master without slots: {seen}")
        sid = new_sid()
        found.setdefault(cluster.where(f"{PREFIX}stream:{sid}").port, sid)
    return [found[n.port] for n in cluster.nodes]


def expected_shard_channels(cluster: Cluster, counts: dict[str, int]) -> dict[int, dict[str, int]]:
    """{port: {channel: subscribers}}: each channel on the master owning its slot only."""
    out: dict[int, dict[str, int]] = {n.port: {} for n in cluster.nodes}
    for channel, n in counts.items():
        out[cluster.where(channel).port][channel] = n
    return out


def shard_channels(cluster: Cluster) -> dict[int, dict[str, int]]:
    return {n.port: n.shard_channels() for n in cluster.nodes}


async def shard_channels_become(
    cluster: Cluster, counts: dict[str, int], seconds: float = 5
) -> None:
    want = expected_shard_channels(cluster, counts)
    await eventually(lambda: shard_channels(cluster) == want, seconds,
                     lambda: f"subscribed {shard_channels(cluster)}, want {want}")  # fmt: skip


def subscribers(pair: Pair, sids: list[str]) -> list[tuple[str, HubProcess, str, dict[str, str]]]:
    """(name, hub, path, headers): B's socket on every stream, the kitchen's and the
    platform's inbox on B, and one stream socket on A (local delivery)."""
    out = [(f"stream{i}@B", pair.b, f"/ws/streams/{sid}", PLATFORM) for i, sid in enumerate(sids)]
    out += [("kitchen@B", pair.b, "/ws/inbox", KITCHEN),
            ("platform@B", pair.b, "/ws/inbox", PLATFORM),
            ("stream0@A", pair.a, f"/ws/streams/{sids[0]}", PLATFORM)]  # fmt: skip
    return out


# -- 1: channels spread over the masters; delivery across instances ---------------------------


async def test_channels_spread_over_masters_and_reach_the_other_instance(pair: Pair) -> None:
    """Streams on every master, a tenant inbox and the platform inbox: B gets A's events once."""
    cluster = pair.cluster
    sids = sids_on_every_master(cluster)
    assert len({cluster.where(f"{PREFIX}stream:{s}").port for s in sids}) == 3
    log = Log()
    inboxes: dict[str, set[str] | None] = {"kitchen@B": None, "platform@B": None}
    async with http(pair.a) as ca, http(pair.b) as cb, AsyncExitStack() as stack:
        for sid in sids:
            await log.append(ca, sid, [order("ali")])
        subs = [await stack.enter_async_context(Sub(*s)) for s in subscribers(pair, sids)]
        channels = {f"{PREFIX}stream:{s}": 1 for s in sids[1:]}
        channels |= {f"{PREFIX}stream:{sids[0]}": 2, f"{PREFIX}inbox:{RESTAURANT}": 1,
                     f"{PREFIX}inbox:*": 1}  # fmt: skip
        # Every subscription is live before its socket's replay: no polling needed.
        assert shard_channels(cluster) == expected_shard_channels(cluster, channels)
        for node in cluster.nodes:  # hub:ctl is plain pub/sub, on every master, by both hubs
            assert node.plain_channels() == {f"{PREFIX}ctl": 2}, node.name

        for i in range(60):
            await log.append(cb if i % 5 == 4 else ca, sids[i % 3], [note(i)])
            await asyncio.sleep(0.01)
        await settle(subs, log, inboxes)

    expect_all(subs, log, inboxes)
    written_on_a = [e for i, e in enumerate(log.by_pos()[3:]) if i % 5 != 4]
    for sub in subs[:3]:
        lat = [sub.arrived[e["id"]] - log.sent[e["id"]]
               for e in written_on_a if e["id"] in sub.arrived]  # fmt: skip
        print(f"latency cluster written on A -> {sub.name:10}: {percentiles(lat)}")
    await shard_channels_become(cluster, {})  # the sockets left: every channel is released


# -- 2: pub/sub connections killed on one master -------------------------------------------


async def test_killed_pubsub_connections_on_one_master_lose_nothing(
    pair: Pair, rng: random.Random
) -> None:
    """CLIENT KILL TYPE pubsub on one master, again and again, under load: nothing lost."""
    cluster = pair.cluster
    sids = sids_on_every_master(cluster)
    victim = cluster.nodes[1]
    log = Log()
    inboxes: dict[str, set[str] | None] = {"kitchen@B": None, "platform@B": None}
    async with http(pair.a) as ca, http(pair.b) as cb, AsyncExitStack() as stack:
        for sid in sids:
            await log.append(ca, sid, [order("ali")])
        subs = [await stack.enter_async_context(Sub(*s)) for s in subscribers(pair, sids)]
        before = [await metrics(c) for c in (ca, cb)]
        writing = True
        kills: list[int] = []

        async def writer(c: httpx.AsyncClient, w: str) -> None:
            for i in range(120):
                await log.append(c, sids[i % 3], [note(i, w=w)])
                await asyncio.sleep(rng.uniform(0, 0.01))

        async def killer() -> None:
            while writing:
                await asyncio.sleep(rng.uniform(0.15, 0.3))
                killed = await asyncio.to_thread(victim.command, "CLIENT", "KILL", "TYPE", "pubsub")
                assert isinstance(killed, int)
                kills.append(killed)

        kill_task = asyncio.create_task(killer())
        try:
            await asyncio.wait_for(asyncio.gather(writer(ca, "a"), writer(cb, "b")), timeout(60))
        finally:
            writing = False
            await kill_task
        await settle(subs, log, inboxes, 30)
        for c in (ca, cb):
            await health_becomes(c, is_ok, 15)
        after = [await metrics(c) for c in (ca, cb)]

    print(f"CLIENT KILL TYPE pubsub on {victim.name}: {len(kills)} times, {sum(kills)} connections")
    assert sum(k > 0 for k in kills) >= 3, kills
    expect_all(subs, log, inboxes)
    for m0, m1 in zip(before, after, strict=True):
        assert m1["hub_redis_reconnects_total"] > m0["hub_redis_reconnects_total"], m1


# -- 3: a master stopped, then back -----------------------------------------------------------


async def test_stopped_master_degrades_healthz_then_everything_is_backfilled(pair: Pair) -> None:
    """The node both hubs were given stops: degraded; back: ok, B's feeds complete, once."""
    cluster = pair.cluster
    sids = sids_on_every_master(cluster)
    down = cluster.nodes[0]  # HUB_REDIS_URL's node: the hubs know the others by now
    log = Log()
    inboxes: dict[str, set[str] | None] = {"kitchen@B": None, "platform@B": None}
    async with http(pair.a) as ca, http(pair.b) as cb, AsyncExitStack() as stack:
        for sid in sids:
            await log.append(ca, sid, [order("ali")])
        subs = [await stack.enter_async_context(Sub(*s)) for s in subscribers(pair, sids)]
        on_a = [s for s in subs if s.name.endswith("@A")]
        on_b = [s for s in subs if s.name.endswith("@B")]
        for i in range(6):
            await log.append(ca, sids[i % 3], [note(i)])
        await settle(subs, log, inboxes)
        before = await metrics(cb)

        down.stop()
        for c in (ca, cb):
            status, body = await health_becomes(c, lambda got: got[1]["status"] == "degraded", 10)
            assert status == 200, body
            assert body["checks"]["streams_db"] == "ok", body
            assert body["checks"]["broker"].startswith("failing"), body
        for i in range(6, 24):  # writes go on; A's own subscriber stays live
            await log.append(ca, sids[i % 3], [note(i)])
        await settle(on_a, log, inboxes, 5)

        down.start()
        t0 = time.monotonic()
        await asyncio.to_thread(cluster.wait_ok)
        for c in (ca, cb):
            await health_becomes(c, is_ok, 20)
        await settle(on_b, log, inboxes, 20)
        recovered = time.monotonic() - t0
        after = await metrics(cb)
        for i in range(24, 30):  # live delivery across instances is back
            await log.append(ca, sids[i % 3], [note(i)])
        await settle(subs, log, inboxes)
        assert (await health(cb))[1]["status"] == "ok"

    print(f"master {down.name} back: B complete and both hubs ok after {recovered:.2f}s")
    expect_all(subs, log, inboxes)
    assert after["hub_redis_reconnects_total"] > before["hub_redis_reconnects_total"], after
    assert after["hub_backfilled_events_total"] > before["hub_backfilled_events_total"], after


# -- 4: a slot migrated to another master -------------------------------------------------


def move_slot(cluster: Cluster, slot: int, to: ClusterNode) -> None:
    """Migrate an (empty) slot to ``to``, as ``redis-cli --cluster reshard`` would."""
    source = cluster.owner(slot)
    ids = {n.port: n.command("CLUSTER", "MYID") for n in cluster.nodes}
    assert to.command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port]) == b"OK"
    assert source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to.port]) == b"OK"
    for node in (to, source, *(n for n in cluster.nodes if n not in (to, source))):
        assert node.command("CLUSTER", "SETSLOT", slot, "NODE", ids[to.port]) == b"OK"
    cluster.wait_ok()
    assert cluster.owner(slot) is to


async def test_migrated_slot_is_followed_to_its_new_master(pair: Pair) -> None:
    """A subscribed stream's slot moves to another master: B re-subscribes there, nothing lost."""
    cluster = pair.cluster
    sid = sids_on_every_master(cluster)[0]
    channel = f"{PREFIX}stream:{sid}"
    source = cluster.where(channel)
    target = next(n for n in cluster.nodes if n is not source)
    log = Log()
    async with http(pair.a) as ca, http(pair.b) as cb, AsyncExitStack() as stack:
        await log.append(ca, sid, [order("ali")])
        sub = await stack.enter_async_context(
            Sub("stream@B", pair.b, f"/ws/streams/{sid}", auth("ali", "customer"))
        )
        assert source.shard_channels() == {channel: 1}
        for i in range(5):
            await log.append(ca, sid, [note(i)])
        await sub.reaches(6)

        await asyncio.to_thread(move_slot, cluster, cluster.slot(channel), target)
        for i in range(5, 20):  # published while B moves over (A follows MOVED)
            await log.append(ca, sid, [note(i)])
            await asyncio.sleep(0.02)
        await shard_channels_become(cluster, {channel: 1}, 10)
        assert target.shard_channels() == {channel: 1}
        await sub.reaches(21)
        for c in (ca, cb):
            await health_becomes(c, is_ok, 15)
        for i in range(20, 25):  # and live again from the new master
            await log.append(ca, sid, [note(i)])
        await sub.reaches(26, 5)
        await asyncio.sleep(0.3)

    sub.check(log.stream(sid))


# -- 5: how a master is reached ----------------------------------------------------------------


def test_node_urls_keep_the_credentials_and_options_of_hub_redis_url() -> None:
    """A master's URL keeps HUB_REDIS_URL's credentials and options; CLUSTER SLOTS is parsed."""
    from hub.infra.broker.cluster import node_url, parse_slots

    url = "rediss://hub:p%40ss@seed.example:6380/3?ssl_cert_reqs=none"
    assert (
        node_url(url, "10.0.0.7", 7000) == "rediss://hub:p%40ss@10.0.0.7:7000?ssl_cert_reqs=none"
    )
    assert node_url("redis://seed", "::1", 7001) == "redis://[::1]:7001"
    reply = [[0, 99, [b"", 7000, b"id-a"]], [100, 16383, [b"10.0.0.8", 7001, b"id-b"], [b"x", 1]]]
    slots, masters = parse_slots(reply, "seed.example")
    assert masters == ["10.0.0.8:7001", "seed.example:7000"]
    assert (slots[0], slots[99], slots[100], slots[16383]) == (
        "seed.example:7000", "seed.example:7000", "10.0.0.8:7001", "10.0.0.8:7001",
    )  # fmt: skip
