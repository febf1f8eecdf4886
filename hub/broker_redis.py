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
  (re)connect asks every local subscriber to backfill from the store (``on_resync``);
- a publisher that had to drop messages (its outbox overflowed during an outage) tells
  every instance to backfill, through the control channel ``hub:ctl``;
- duplicates (an event seen by backfill and by Redis) are dropped by ``seq``/``pos``, and
  a ``seq`` gap on a stream is filled from the store before the later event is sent.

Messages carry the encoded event, so receivers deliver without a database read. With
``sharded=True`` the broker uses SSUBSCRIBE/SPUBLISH (Redis 7 sharded pub/sub), so
channels spread over a cluster's shards; redis-py's asyncio PubSub has no
``get_sharded_message``: sharded messages arrive through ``get_message`` as ``smessage``.

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
from collections import deque
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from hub.broker import Deliver, Message, Notice, routes
from hub.events import Event
from hub.metrics import Metrics
from hub.store import AppendResult

__all__ = ["RedisBroker"]

log = logging.getLogger("hub.redis")

EVENT, NOTICE, FINAL, RESYNC = b"E", b"N", b"F", b"R"
PUBLISH_BATCH = 512
CONFIRM_TIMEOUT = 2.0
IDLE_PING = 5.0  # seconds of silence before the listener pings Redis
DEAD_AFTER = 15.0  # seconds of silence (no reply to pings) before reconnecting
MAX_BACKOFF = 5.0


def _event_from_json(data: bytes) -> Event:
    o: dict[str, Any] = json.loads(data)
    return Event(
        id=o["id"], stream_id=o["streamId"], seq=int(o["seq"]), pos=int(o["pos"]),
        opcode=int(o["opcode"]), node_id=o["nodeId"], point_id=o["pointId"],
        delta=float(o["delta"]),
        payload=json.dumps(o["payload"], ensure_ascii=False, separators=(",", ":")), ts=o["ts"],
    )  # fmt: skip


class RedisBroker:
    """Pub/sub between hub instances through Redis (see the module docstring)."""

    ordered = False  # messages of different instances may arrive out of pos order

    def __init__(self, url: str, *, sharded: bool = False, prefix: str = "hub:",
                 metrics: Metrics | None = None, max_outbox: int = 20_000) -> None:  # fmt: skip
        self.url = url
        self.sharded = sharded
        self.prefix = prefix
        self.metrics = metrics
        self.max_outbox = max_outbox
        self.instance = secrets.token_hex(4).encode()
        self._client: aioredis.Redis | None = None
        self._deliver: Deliver | None = None
        self._on_resync: Callable[[], None] | None = None
        self._channels: set[str] = set()
        self._confirm: dict[str, asyncio.Future[None]] = {}
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

    @property
    def ctl(self) -> str:
        return self.prefix + "ctl"

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, deliver: Deliver, on_resync: Callable[[], None]) -> None:
        self._deliver = deliver
        self._on_resync = on_resync
        self._client = aioredis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=0
        )
        self._tasks = [
            asyncio.create_task(self._listen(), name="hub-redis-listener"),
            asyncio.create_task(self._publish_loop(), name="hub-redis-publisher"),
        ]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._outbox and self._connected:  # hand what is queued to Redis, briefly
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain(), 2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._drop_pubsub()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        for fut in self._confirm.values():
            if not fut.done():
                fut.cancel()

    def health(self) -> str:
        if not self._connected:
            return f"failing: {self._error}"
        if self._publish_error is not None:
            return f"failing: {self._publish_error}"
        return "ok"

    # -- publishing --------------------------------------------------------------

    def _queue(self, channel: str, data: bytes) -> None:
        if len(self._outbox) >= self.max_outbox:
            self._outbox.popleft()
            self._dropped = True
        self._outbox.append((channel, data))
        self._outbox_ready.set()

    def publish(self, result: AppendResult) -> None:
        deliver = self._deliver
        for channel, event in routes(result):
            if deliver is not None:
                deliver(channel, event)
            self._queue(channel, EVENT + self.instance + event.json.encode())

    def publish_notice(self, notice: Notice) -> None:
        channel = "stream:" + notice.stream_id
        if self._deliver is not None:
            self._deliver(channel, notice)
        kind = FINAL if notice.final else NOTICE
        self._queue(channel, kind + self.instance + notice.frame.encode())

    async def _publish_loop(self) -> None:
        backoff = 0.1
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            try:
                await self._drain()
                backoff = 0.1
            except (RedisError, OSError) as exc:
                if self._publish_error is None:
                    log.warning("publishing to redis fails (%s); retrying", exc)
                self._publish_error = f"publish: {exc}"
                pause = backoff * (1 + random.random())
                if self._connected:  # Redis is there but refuses: plain backoff
                    await asyncio.sleep(pause)
                else:  # wait for the listener to see Redis back, or the backoff
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._up.wait(), pause)
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
                except (RedisConnectionError, OSError):
                    await self._send(batch)  # a pooled connection gone stale: once more at once
            except (RedisError, OSError):
                # Put it back (a repeat is harmless: receivers drop duplicates).
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
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        for channel, data in batch:
            name = self.ctl if ctl else self.prefix + channel
            if self.sharded and not ctl:
                pipe.execute_command("SPUBLISH", name, data)
            else:
                pipe.publish(name, data)
        await pipe.execute()

    # -- subscribing -------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        pubsub = self._pubsub
        if pubsub is None or not self._connected:
            return  # the listener subscribes it on (re)connect, then resyncs
        name = self.prefix + channel
        fut = self._confirm.get(name)
        if fut is None or fut.done():
            fut = self._confirm[name] = asyncio.get_running_loop().create_future()
        try:
            await self._subscribe_cmd(pubsub, name)
            await asyncio.wait_for(asyncio.shield(fut), CONFIRM_TIMEOUT)
        except (RedisError, OSError, TimeoutError):
            return  # Redis is failing: the listener reconnects and every subscriber resyncs

    async def _subscribe_cmd(self, pubsub: Any, *names: str) -> None:
        if self.sharded:
            await pubsub.execute_command("SSUBSCRIBE", *names)
        else:
            await pubsub.execute_command("SUBSCRIBE", *names)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is None or not self._connected:
            return
        with contextlib.suppress(RedisError, OSError):
            cmd = "SUNSUBSCRIBE" if self.sharded else "UNSUBSCRIBE"
            await pubsub.execute_command(cmd, self.prefix + channel)

    # -- listening ---------------------------------------------------------------

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._connected = False
        self._up.clear()
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._session()
            except (RedisError, OSError, TimeoutError) as exc:
                self._error = str(exc) or type(exc).__name__
            if self._connected:
                backoff = 0.1  # it had worked: start the backoff over
            await self._drop_pubsub()
            for fut in self._confirm.values():
                if not fut.done():
                    fut.set_result(None)
            self._confirm.clear()
            log.warning("redis pub/sub lost (%s); reconnecting in %.1fs", self._error, backoff)
            await asyncio.sleep(backoff * (1 + random.random()))
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _session(self) -> None:
        """One pub/sub connection's life: subscribe everything, resync, relay messages."""
        assert self._client is not None
        pubsub = self._client.pubsub()
        self._pubsub = pubsub
        self._resync_after = 0
        subscribed = set(self._channels)
        if subscribed:
            await self._subscribe_cmd(pubsub, *(self.prefix + c for c in subscribed))
        await pubsub.execute_command("SUBSCRIBE", self.ctl)  # confirmed last: all are live
        loop = asyncio.get_running_loop()
        last_seen = loop.time()
        pinged = False
        while True:
            msg = await pubsub.get_message(timeout=1.0)
            now = loop.time()
            if msg is None:
                if now - last_seen > DEAD_AFTER:
                    raise TimeoutError("redis stopped answering")
                if now - last_seen > IDLE_PING and not pinged:
                    await pubsub.execute_command("PING")
                    pinged = True
                continue
            last_seen, pinged = now, False
            kind = msg["type"]
            if isinstance(kind, bytes):
                kind = kind.decode()
            channel = msg["channel"]
            name = channel.decode() if isinstance(channel, bytes) else channel
            if kind in ("subscribe", "ssubscribe"):
                if name == self.ctl and not self._connected:
                    self._connected = True  # from here on subscribe() goes straight to Redis
                    self._error = ""
                    self._up.set()
                    # Channels (un)subscribed while this session was being set up.
                    gained = self._channels - subscribed
                    lost = subscribed - self._channels
                    if gained:
                        # Resync once more when these are confirmed, too.
                        self._resync_after = len(gained)
                        await self._subscribe_cmd(pubsub, *(self.prefix + c for c in gained))
                    if lost:
                        cmd = "SUNSUBSCRIBE" if self.sharded else "UNSUBSCRIBE"
                        await pubsub.execute_command(cmd, *(self.prefix + c for c in lost))
                    if self._ever_connected and self.metrics is not None:
                        self.metrics.redis_reconnects.inc()
                    self._ever_connected = True
                    if self._on_resync is not None:
                        self._on_resync()  # backfill whatever Redis may have lost
                elif self._resync_after > 0:
                    self._resync_after -= 1
                    if self._resync_after == 0 and self._on_resync is not None:
                        self._on_resync()
                fut = self._confirm.pop(name, None) if name else None
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif kind in ("message", "smessage"):
                self._dispatch(name, msg["data"])

    def _dispatch(self, name: str, data: bytes) -> None:
        kind, origin, body = data[:1], data[1:9], data[9:]
        if origin == self.instance:
            return  # delivered locally already
        if name == self.ctl:
            if kind == RESYNC and self._on_resync is not None:
                self._on_resync()
            return
        if self._deliver is None or not name.startswith(self.prefix):
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
        self._deliver(channel, message)
