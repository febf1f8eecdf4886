"""The Redis broker: links hub instances through Redis pub/sub, repaired from the log.

Redis pub/sub is at-most-once: a restart or a dropped subscriber connection loses
messages silently. The hub does not need more from it, because the streams DB is the
truth and every subscriber can re-read it:

- committed events are delivered to this instance's subscribers at once (never through
  Redis, so a Redis outage does not stop local delivery), and published to Redis after
  the commit, in commit order, by one publisher task with a bounded outbox;
- channels are per stream and per tenant inbox (``hub:stream:{id}``, ``hub:inbox:{t}``,
  ``hub:inbox:*`` for the platform); an instance subscribes only to the channels it has
  local subscribers for, and unsubscribes when the last one leaves;
- one listener task per instance owns the pub/sub connection; it reconnects forever
  with backoff (redis-py's own retries give up after a few seconds) and after every
  (re)connect asks every local subscriber to backfill from the store (``Receiver.resync``);
- a publisher that had to drop messages (its outbox overflowed during an outage) tells
  every instance to backfill, through the control channel ``hub:ctl``;
- duplicates (an event seen by backfill and by Redis) are dropped by ``seq``/``pos``, and
  a ``seq`` gap on a stream is filled from the store before the later event is sent.

Messages carry the encoded event, so receivers deliver without a database read.

Sharded mode (``sharded=True``) uses SSUBSCRIBE/SPUBLISH (Redis 7 sharded pub/sub) for
the stream and inbox channels; ``hub:ctl`` stays plain pub/sub. redis-py's asyncio
``PubSub`` has no ``get_sharded_message`` (only its ``ClusterPubSub`` does): sharded
messages arrive through ``get_message`` with type ``smessage``. Against one server (or
a proxy that accepts every slot) one connection carries everything, as in plain mode.

Against a real multi-shard Redis Cluster (``cluster=True``, or ``None``: asked once with
``INFO cluster``) a shard channel lives on the master that owns its hash slot, and a
node answers MOVED for slots it does not own and CROSSSLOT for SSUBSCRIBEs that span
slots. So in cluster mode:

- the broker keeps the slot map itself (:mod:`hub.infra.broker.cluster`: ``CLUSTER SLOTS``, asked
  of any known node) and one small client per master; it is asked again at every listener
  session and after any failed publish;
- the publisher groups each batch by master and sends one SPUBLISH pipeline per master
  (concurrently, each in commit order); a master that fails keeps only its own messages
  in the outbox (the others are sent), so a channel's messages are never reordered;
  ``hub:ctl`` is PUBLISHed on any one master (a cluster broadcasts PUBLISH to all nodes);
- a listener session holds one pub/sub connection per master, each read by its own
  task (owned and awaited by the listener task): each connection SSUBSCRIBEs the
  channels of its master's slots (one command per slot), then SUBSCRIBEs ``hub:ctl``
  (confirmed last: everything before it is live). The session is live, and resyncs,
  once every connection has confirmed ``hub:ctl``; ``hub:ctl`` messages are taken from
  one connection only;
- any failure on any connection, a MOVED/CLUSTERDOWN reply, or a shard channel that the
  server unsubscribes by itself (its slot migrated to another master) ends the whole
  session: the listener reconnects with backoff, with a fresh slot map, re-subscribes
  and resyncs. Live delivery between instances therefore needs every master reachable.

Overflow policy: the outbox holds at most ``max_outbox`` messages; past that the oldest
are dropped and a resync is broadcast once Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import AskError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from hub.events import Event
from hub.infra.broker.base import Message, Notice, Receiver, routes
from hub.infra.broker.cluster import CLIENT_OPTIONS, Rerouted, Topology, by_slot
from hub.infra.store.base import AppendResult
from hub.metrics import Metrics

__all__ = ["RedisBroker"]

log = logging.getLogger("hub.redis")

EVENT, NOTICE, FINAL, RESYNC = b"E", b"N", b"F", b"R"
PUBLISH_BATCH = 512
CONFIRM_TIMEOUT = 2.0
IDLE_PING = 5.0  # seconds of silence before the listener pings Redis
DEAD_AFTER = 15.0  # seconds of silence (no reply to pings) before reconnecting
MAX_BACKOFF = 5.0
CLOSE_TIMEOUT = 2.0  # seconds each connection close may take at shutdown


def _event_from_json(data: bytes) -> Event:
    o: dict[str, Any] = json.loads(data)
    return Event(
        id=o["id"], stream_id=o["streamId"], seq=int(o["seq"]), pos=int(o["pos"]),
        opcode=int(o["opcode"]), node_id=o["nodeId"], point_id=o["pointId"],
        delta=float(o["delta"]),
        payload=json.dumps(o["payload"], ensure_ascii=False, separators=(",", ":")), ts=o["ts"],
    )  # fmt: skip


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _messages(pubsub: Any, label: str,
                    running: Callable[[], bool]) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
    """A pub/sub connection's messages while ``running()``; pings it when idle, raises
    when it stays silent."""
    loop = asyncio.get_running_loop()
    last_seen = loop.time()
    pinged = False
    while running():
        msg = await pubsub.get_message(timeout=1.0)
        now = loop.time()
        if msg is None:
            if now - last_seen > DEAD_AFTER:
                raise TimeoutError(f"{label} stopped answering")
            if now - last_seen > IDLE_PING and not pinged:
                await pubsub.execute_command("PING")
                pinged = True
            continue
        last_seen, pinged = now, False
        yield msg


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them, CLOSE_TIMEOUT at most each round: a task that
    swallowed its cancellation (see RedisBroker._listen) is cancelled again, and one still
    running after three rounds is reported, not waited for forever."""
    pending = {task for task in tasks if not task.done()}
    for _ in range(3):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
    for task in pending:
        log.error("%s did not end when cancelled; left running", task.get_name())


@dataclass(eq=False)
class _Link:
    """A cluster listener session's pub/sub connection to one master."""

    node: str
    pubsub: Any
    live: bool = False  # hub:ctl confirmed: every SSUBSCRIBE sent before it is live
    unsubscribing: Counter[str] = field(default_factory=Counter)  # SUNSUBSCRIBEs unanswered


class RedisBroker:
    """Pub/sub between hub instances through Redis (see the module docstring)."""

    ordered = False  # messages of different instances may arrive out of pos order

    def __init__(self, url: str, *, sharded: bool = False, cluster: bool | None = None,
                 prefix: str = "hub:", metrics: Metrics | None = None,
                 max_outbox: int = 20_000) -> None:  # fmt: skip
        self.url = url
        self.sharded = sharded
        self.prefix = prefix
        self.metrics = metrics
        self.max_outbox = max_outbox
        self.instance = secrets.token_hex(4).encode()
        self._client: aioredis.Redis | None = None
        self._receiver: Receiver | None = None  # this instance's channels (see start)
        self._channels: set[str] = set()
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._late: set[str] = set()  # subscribed past CONFIRM_TIMEOUT: resync once confirmed
        self._pubsub: Any = None
        self._connected = False
        self._up = asyncio.Event()  # set while the listener is connected (wakes the publisher)
        self._publish_error: str | None = None
        self._resync_after = 0  # confirmations still awaited before one more resync
        self._ever_connected = False
        self._error = "not connected yet"
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._outbox_ready = asyncio.Event()
        self._dropped = False
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        # Cluster mode (sharded only): None until the server has been asked.
        self._topo = Topology(url, cluster if sharded else False)
        self._links: dict[str, _Link] = {}  # this session's connections, by master
        self._route: list[str | None] = []  # this session's slot map
        self._ctl_link: _Link | None = None  # the connection whose hub:ctl messages count
        self._kick: asyncio.Future[str] | None = None  # set: end this session (slot map moved)

    def _running(self) -> bool:
        return not self._closed

    @property
    def ctl(self) -> str:
        return self.prefix + "ctl"

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self._client = aioredis.from_url(self.url, **CLIENT_OPTIONS)
        self._tasks = [
            asyncio.create_task(self._listen(), name="hub-redis-listener"),
            asyncio.create_task(self._publish_loop(), name="hub-redis-publisher"),
        ]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._receiver = None  # deliver nothing more (publish, the listener, resync)
        if self._outbox and self._connected:  # hand what is queued to Redis, briefly
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain(), 2.0)
        await _stop(self._tasks)
        self._tasks.clear()
        for fut in self._confirm.values():
            if not fut.done():
                fut.cancel()
        # Closing connections to a Redis that stopped answering must not hold up the
        # process's exit: each close is bounded, and what did not close is dropped.
        for close in (self._drop_pubsub, self._topo.close, self._close_client):
            try:
                await asyncio.wait_for(close(), CLOSE_TIMEOUT)
            except (TimeoutError, RedisError, OSError) as exc:
                log.warning("closing the Redis link: %s", exc or type(exc).__name__)

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def health(self) -> str:
        if not self._connected:
            return f"failing: {self._error}"
        if self._publish_error is not None:
            return f"failing: {self._publish_error}"
        return "ok"

    def _seed(self) -> aioredis.Redis:
        assert self._client is not None
        return self._client

    async def _is_cluster(self) -> bool:
        return await self._topo.is_cluster(self._seed())

    # -- publishing --------------------------------------------------------------

    def _queue(self, channel: str, data: bytes) -> None:
        if self._closed:
            return  # nothing sends it any more
        if len(self._outbox) >= self.max_outbox:
            self._outbox.popleft()
            self._dropped = True
        self._outbox.append((channel, data))
        self._outbox_ready.set()

    def publish(self, result: AppendResult) -> None:
        receiver = self._receiver
        for channel, event in routes(result):
            if receiver is not None:
                receiver.deliver(channel, event)
            self._queue(channel, EVENT + self.instance + event.json.encode())

    def publish_notice(self, notice: Notice) -> None:
        channel = "stream:" + notice.stream_id
        if self._receiver is not None:
            self._receiver.deliver(channel, notice)
        kind = FINAL if notice.final else NOTICE
        self._queue(channel, kind + self.instance + notice.frame.encode())

    async def _publish_loop(self) -> None:
        backoff = 0.1
        while not self._closed:  # (see _listen)
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            try:
                await self._drain()
                backoff = 0.1
            except (RedisError, OSError) as exc:
                if self._closed:
                    return
                if self._publish_error is None:
                    log.warning("publishing to redis fails (%s); retrying", exc)
                self._publish_error = f"publish: {exc}"
                pause = backoff * (1 + random.random())
                if self._connected:  # Redis is there but refuses: plain backoff
                    await asyncio.sleep(pause)
                else:  # wait for the listener to see Redis back, or the backoff
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(pause):
                            await self._up.wait()
                backoff = min(MAX_BACKOFF, backoff * 2)
                self._outbox_ready.set()

    async def _drain(self) -> None:
        """Send the outbox in batches; on failure the batch goes back to its front."""
        while self._outbox:
            batch = [self._outbox.popleft()
                     for _ in range(min(PUBLISH_BATCH, len(self._outbox)))]  # fmt: skip
            try:
                try:
                    await self._send(batch)
                except (RedisConnectionError, OSError, AskError):
                    # A pooled connection gone stale, or (cluster) a slot that moved: once
                    # more at once (the cluster path asks for the slot map first).
                    await self._send(batch)
            except (RedisError, OSError):
                # Put it back (a repeat is harmless: receivers drop duplicates). The cluster
                # path has removed from ``batch`` what its healthy masters took.
                room = self.max_outbox - len(self._outbox)
                if room < len(batch):
                    self._dropped = True
                self._outbox.extendleft(reversed(batch[: max(room, 0)]))
                raise
            if self._dropped:
                self._dropped = False
                await self._send([("", RESYNC + self.instance)], ctl=True)
            self._publish_error = None

    async def _send(self, batch: list[tuple[str, bytes]], *, ctl: bool = False) -> None:
        if self.sharded and await self._is_cluster():
            await self._send_cluster(batch, ctl=ctl)
            return
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        for channel, data in batch:
            name = self.ctl if ctl else self.prefix + channel
            if self.sharded and not ctl:
                pipe.execute_command("SPUBLISH", name, data)
            else:
                pipe.publish(name, data)
        await pipe.execute()

    async def _send_cluster(self, batch: list[tuple[str, bytes]], *, ctl: bool) -> None:
        """SPUBLISH ``batch`` with one pipeline per master. On failure ``batch`` keeps only
        the messages of the masters that failed (the others were sent), then it raises."""
        try:
            slots = await self._topo.route(self._seed())
            if ctl:
                await self._publish_ctl([data for _, data in batch])
                return
            routed = [(slots[key_slot((self.prefix + channel).encode())], channel, data)
                      for channel, data in batch]  # fmt: skip
            groups: dict[str | None, list[tuple[str, bytes]]] = {}
            for node, channel, data in routed:
                groups.setdefault(node, []).append((self.prefix + channel, data))
            results = await asyncio.gather(
                *(self._spublish(node, items) for node, items in groups.items()),
                return_exceptions=True,
            )
            failed = {node for node, r in zip(groups, results, strict=True) if r is not None}
            if failed:
                batch[:] = [(channel, data) for node, channel, data in routed if node in failed]
                error = next(r for r in results if r is not None)
                assert isinstance(error, BaseException)
                raise error
        except Exception:
            self._topo.stale = True  # ask for the slot map again before the next try
            raise

    async def _spublish(self, node: str | None, items: list[tuple[str, bytes]]) -> None:
        if node is None:
            raise RedisError(f"the slot of {items[0][0]} has no master")
        pipe = self._topo.node(node).pipeline(transaction=False)
        for name, data in items:
            pipe.execute_command("SPUBLISH", name, data)
        await pipe.execute()

    async def _publish_ctl(self, messages: list[bytes]) -> None:
        """PUBLISH on hub:ctl through the first master that takes it (a cluster broadcasts)."""
        error: Exception = RedisError("no cluster master known")
        for node in self._topo.masters:
            pipe = self._topo.node(node).pipeline(transaction=False)
            for data in messages:
                pipe.publish(self.ctl, data)
            try:
                await pipe.execute()
                return
            except (RedisError, OSError) as exc:
                error = exc
        raise error

    # -- subscribing -------------------------------------------------------------

    def _pubsub_of(self, name: str) -> Any:
        """The connection that carries ``name`` in this session (None: there is none)."""
        if not self._links:
            return self._pubsub
        link = self._link_of(name)
        return None if link is None else link.pubsub

    def _link_of(self, name: str) -> _Link | None:
        node = self._route[key_slot(name.encode())] if self._route else None
        link = self._links.get(node) if node is not None else None
        if link is None and self._connected:
            self._reroute(f"no connection for the slot of {name}")
        return link

    def _reroute(self, why: str) -> None:
        if self._kick is not None and not self._kick.done():
            self._kick.set_result(why)

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        name = self.prefix + channel
        pubsub = self._pubsub_of(name)
        if pubsub is None or not self._connected:
            return  # the listener subscribes it on (re)connect, then resyncs
        fut = self._confirm.get(name)
        if fut is None or fut.done():
            fut = self._confirm[name] = asyncio.get_running_loop().create_future()
        try:
            await self._subscribe_cmd(pubsub, name)
            async with asyncio.timeout(CONFIRM_TIMEOUT):  # (not wait_for: see _listen)
                await asyncio.shield(fut)
        except TimeoutError:
            # Slow, not failed: the subscriber goes live now, and what was published
            # before Redis took the subscription is read back from the store once it has.
            self._late.add(name)
        except (RedisError, OSError):
            return  # Redis is failing: the listener reconnects and every subscriber resyncs

    async def _subscribe_cmd(self, pubsub: Any, *names: str) -> None:
        if self.sharded:
            await pubsub.execute_command("SSUBSCRIBE", *names)
        else:
            await pubsub.execute_command("SUBSCRIBE", *names)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        name = self.prefix + channel
        if self._links:  # cluster: the connection of the channel's master
            link = self._link_of(name)
            if link is None or not self._connected:
                return
            link.unsubscribing[name] += 1  # its reply is expected (not a slot that moved)
            pubsub = link.pubsub
        else:
            pubsub = self._pubsub
            if pubsub is None or not self._connected:
                return
        with contextlib.suppress(RedisError, OSError):
            cmd = "SUNSUBSCRIBE" if self.sharded else "UNSUBSCRIBE"
            await pubsub.execute_command(cmd, name)

    # -- listening ---------------------------------------------------------------

    async def _drop_pubsub(self) -> None:
        pubsubs = [link.pubsub for link in self._links.values()]
        if self._pubsub is not None:
            pubsubs.append(self._pubsub)
        self._pubsub, self._links, self._route, self._ctl_link = None, {}, [], None
        self._kick = None
        self._connected = False
        self._up.clear()
        for pubsub in pubsubs:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _listen(self) -> None:
        backoff = 0.1
        # Until closed, not only until cancelled: on Python 3.11 asyncio.wait_for (which
        # redis-py sends each command under) swallows a cancellation that comes as the
        # command completes (CPython gh-86296), and the loop would go on after close().
        while not self._closed:
            try:
                await self._session()
            except (RedisError, OSError, TimeoutError) as exc:
                self._error = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug must not end the listener: log it, go on
                self._error = f"{type(exc).__name__}: {exc}"
                log.error("redis listener failed unexpectedly: %s", self._error)
            if self._closed:
                return
            if self._connected:
                backoff = 0.1  # it had worked: start the backoff over
            await self._drop_pubsub()
            for fut in self._confirm.values():
                if not fut.done():
                    fut.set_result(None)
            self._confirm.clear()
            self._late.clear()  # the next session resyncs every subscriber anyway
            log.warning("redis pub/sub lost (%s); reconnecting in %.1fs", self._error, backoff)
            await asyncio.sleep(backoff * (1 + random.random()))
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _went_live(
        self,
        subscribed: set[str],
        sub: Callable[[list[str]], Awaitable[None]],
        unsub: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        """Every connection of the session confirmed hub:ctl: catch up, then resync."""
        self._connected = True  # from here on subscribe() goes straight to Redis
        self._error = ""
        self._up.set()
        # Channels (un)subscribed while this session was being set up.
        gained = self._channels - subscribed
        lost = subscribed - self._channels
        if gained:
            # Resync once more when these are confirmed, too.
            self._resync_after = len(gained)
            await sub([self.prefix + c for c in gained])
        if lost:
            await unsub([self.prefix + c for c in lost])
        if self._ever_connected and self.metrics is not None:
            self.metrics.redis_reconnects.inc()
        self._ever_connected = True
        self._resync()  # backfill whatever Redis may have lost

    def _confirmed(self, name: str) -> None:
        """A (S)SUBSCRIBE confirmation other than the session's first hub:ctl ones."""
        if self._resync_after > 0:
            self._resync_after -= 1
            if self._resync_after == 0:
                self._resync()
        fut = self._confirm.pop(name, None) if name else None
        if fut is not None and not fut.done():
            fut.set_result(None)
        if name in self._late:
            self._late.discard(name)
            self._resync()

    def _resync(self) -> None:
        """Messages may have been lost: every local subscriber re-reads the log."""
        if self._receiver is not None:
            self._receiver.resync()

    async def _session(self) -> None:
        """One pub/sub connection's life: subscribe everything, resync, relay messages."""
        if self.sharded and await self._is_cluster():
            await self._cluster_session()
            return
        assert self._client is not None
        pubsub = self._client.pubsub()
        self._pubsub = pubsub
        self._resync_after = 0
        subscribed = set(self._channels)
        if subscribed:
            await self._subscribe_cmd(pubsub, *(self.prefix + c for c in subscribed))
        await pubsub.execute_command("SUBSCRIBE", self.ctl)  # confirmed last: all are live

        async def sub(names: list[str]) -> None:
            await self._subscribe_cmd(pubsub, *names)

        async def unsub(names: list[str]) -> None:
            await pubsub.execute_command("SUNSUBSCRIBE" if self.sharded else "UNSUBSCRIBE",
                                         *names)  # fmt: skip

        async for msg in _messages(pubsub, "redis", self._running):
            kind, name = _text(msg["type"]), _text(msg["channel"])
            if kind in ("subscribe", "ssubscribe"):
                if name == self.ctl and not self._connected:
                    await self._went_live(subscribed, sub, unsub)
                    fut = self._confirm.pop(name, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                else:
                    self._confirmed(name)
            elif kind in ("message", "smessage"):
                self._dispatch(name, msg["data"])

    # -- listening to a Redis Cluster ------------------------------------------------

    async def _cluster_session(self) -> None:
        """One cluster session: a pub/sub connection per master, each read by its own task;
        it ends (raising) when any of them fails or the slot map moves under it."""
        route = await self._topo.route(self._seed(), fresh=True)
        masters = sorted({node for node in route if node is not None})
        if not masters:
            raise Rerouted("the cluster's slot map names no master")
        self._route = route
        self._resync_after = 0
        subscribed = set(self._channels)
        groups = by_slot(route, (self.prefix + c for c in subscribed))
        topo = self._topo
        links = self._links = {node: _Link(node, topo.node(node).pubsub()) for node in masters}
        self._ctl_link = links[masters[0]]
        kick = self._kick = asyncio.get_running_loop().create_future()
        for node, link in links.items():
            for names in groups.get(node, []):
                await link.pubsub.execute_command("SSUBSCRIBE", *names)
            await link.pubsub.execute_command("SUBSCRIBE", self.ctl)  # confirmed last
        readers = [asyncio.create_task(self._read_link(link, subscribed),
                                       name=f"hub-redis-listener-{link.node}")
                   for link in links.values()]  # fmt: skip
        try:
            done, _ = await asyncio.wait([kick, *readers], return_when=asyncio.FIRST_COMPLETED)
            if kick.done():
                raise Rerouted(kick.result())
            for task in done:
                task.result()  # a reader's failure ends the session with its error
            raise RedisError("a pub/sub reader stopped")  # readers only end by failing
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _cluster_sub(self, names: list[str]) -> None:
        for node, slot_groups in by_slot(self._route, names).items():
            link = self._links.get(node)
            if link is None:
                raise Rerouted(f"no connection to {node}")
            for group in slot_groups:
                await link.pubsub.execute_command("SSUBSCRIBE", *group)

    async def _cluster_unsub(self, names: list[str]) -> None:
        for node, slot_groups in by_slot(self._route, names).items():
            link = self._links.get(node)
            if link is None:
                continue  # never subscribed there
            for group in slot_groups:
                link.unsubscribing.update(group)
                await link.pubsub.execute_command("SUNSUBSCRIBE", *group)

    async def _read_link(self, link: _Link, subscribed: set[str]) -> None:
        """Relay one master's messages (raises when the connection fails or the slot map
        moved)."""
        async for msg in _messages(link.pubsub, f"redis {link.node}", self._running):
            kind, name = _text(msg["type"]), _text(msg["channel"])
            if kind in ("subscribe", "ssubscribe"):
                if name == self.ctl and not link.live:
                    link.live = True
                    if not self._connected and all(k.live for k in self._links.values()):
                        await self._went_live(subscribed, self._cluster_sub, self._cluster_unsub)
                    fut = self._confirm.pop(name, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                else:
                    self._confirmed(name)
            elif kind == "sunsubscribe":
                if link.unsubscribing[name] > 0:
                    link.unsubscribing[name] -= 1
                else:  # the server dropped it: its slot moved to another master
                    raise Rerouted(f"{link.node} unsubscribed {name} (slot moved)")
            elif kind == "smessage" or (kind == "message" and link is self._ctl_link):
                self._dispatch(name, msg["data"])

    def _dispatch(self, name: str, data: bytes) -> None:
        kind, origin, body = data[:1], data[1:9], data[9:]
        if origin == self.instance:
            return  # delivered locally already
        if name == self.ctl:
            if kind == RESYNC:
                self._resync()
            return
        receiver = self._receiver
        if receiver is None or not name.startswith(self.prefix):
            return
        channel = name[len(self.prefix) :]
        message: Message
        try:
            if kind == EVENT:
                message = _event_from_json(body)
            elif kind in (NOTICE, FINAL):
                message = Notice(channel.removeprefix("stream:"), body.decode(), kind == FINAL)
            else:
                return
        except (ValueError, KeyError, TypeError):
            log.warning("dropping a malformed message on %s", name)
            return
        receiver.deliver(channel, message)
