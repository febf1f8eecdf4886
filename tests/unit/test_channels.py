"""The local channels: who is offered which message, as the memory broker delivers it."""

from __future__ import annotations

from hub.domain.channels import Channels
from hub.events import Event, Opcode
from hub.infra.broker import PLATFORM_INBOX, MemoryBroker, Message, Notice
from hub.infra.store import AppendResult

STREAM = "ord-1"


class Recorder:
    """A subscriber that keeps what it is offered."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.resyncs = 0

    def offer(self, message: Message) -> None:
        self.messages.append(message)

    def resync(self) -> None:
        self.resyncs += 1


class SubscribingBroker(MemoryBroker):
    """The memory broker, keeping which channels it was asked to (un)subscribe."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def subscribe(self, channel: str) -> None:
        self.calls.append("+" + channel)

    async def unsubscribe(self, channel: str) -> None:
        self.calls.append("-" + channel)


def committed(*seqs: int, members: dict[str, int] | None = None) -> AppendResult:
    """An append of STREAM that committed events with ``seqs`` (pos = seq)."""
    events = [
        Event(f"e{s}", STREAM, s, s, Opcode.INVOICE_PAYMENT, None, None, 0.0, "{}", "ts")
        for s in seqs
    ]
    return AppendResult(STREAM, events, events, members or {})


async def started() -> tuple[MemoryBroker, Channels]:
    broker = MemoryBroker()
    channels = Channels(broker)
    await broker.start(channels)
    return broker, channels


async def test_a_message_reaches_every_subscriber_of_its_channel_only() -> None:
    """A notice published on a stream reaches each of its subscribers once, no other."""
    broker, channels = await started()
    a, b, elsewhere = Recorder(), Recorder(), Recorder()
    await channels.add("stream:" + STREAM, a)
    await channels.add("stream:" + STREAM, b)
    await channels.add("stream:ord-2", elsewhere)
    notice = Notice(STREAM, '{"type":"location"}')
    broker.publish_notice(notice)
    assert a.messages == [notice]
    assert b.messages == [notice]
    assert elsewhere.messages == []
    assert len(channels) == 3


async def test_committed_events_reach_the_stream_the_members_and_the_platform() -> None:
    """An append's events go, in commit order, to the stream's channel, to the inbox of
    each member from the pos it joined at, and to the platform's inbox."""
    broker, channels = await started()
    stream, early, late, platform, other = (Recorder() for _ in range(5))
    await channels.add("stream:" + STREAM, stream)
    await channels.add("inbox:cust-1", early)
    await channels.add("inbox:drv-1", late)
    await channels.add(PLATFORM_INBOX, platform)
    await channels.add("inbox:cust-2", other)
    result = committed(1, 2, 3, members={"cust-1": 1, "drv-1": 3})
    broker.publish(result)
    assert stream.messages == result.new
    assert early.messages == result.new
    assert late.messages == result.new[2:]
    assert platform.messages == result.new
    assert other.messages == []


async def test_a_removed_subscriber_is_offered_nothing_more() -> None:
    """After remove, a subscriber gets nothing; removing it again changes nothing."""
    broker, channels = await started()
    gone, stays = Recorder(), Recorder()
    await channels.add("stream:" + STREAM, gone)
    await channels.add("stream:" + STREAM, stays)
    await channels.remove("stream:" + STREAM, gone)
    await channels.remove("stream:" + STREAM, gone)
    broker.publish(committed(1))
    assert gone.messages == []
    assert len(stays.messages) == 1
    assert len(channels) == 1


async def test_the_broker_is_subscribed_by_the_first_and_released_by_the_last() -> None:
    """The broker subscribes a channel once for its first local subscriber and
    unsubscribes it when the last one leaves."""
    broker = SubscribingBroker()
    channels = Channels(broker)
    await broker.start(channels)
    a, b = Recorder(), Recorder()
    await channels.add("stream:" + STREAM, a)
    await channels.add("stream:" + STREAM, b)
    await channels.remove("stream:" + STREAM, a)
    assert broker.calls == ["+stream:" + STREAM]
    await channels.remove("stream:" + STREAM, b)
    assert broker.calls == ["+stream:" + STREAM, "-stream:" + STREAM]


async def test_resync_reaches_every_subscriber_once() -> None:
    """A resync (the broker may have lost messages) tells every subscriber of every
    channel, once each."""
    _, channels = await started()
    subs = [Recorder() for _ in range(3)]
    await channels.add("stream:" + STREAM, subs[0])
    await channels.add("stream:" + STREAM, subs[1])
    await channels.add("inbox:cust-1", subs[2])
    channels.resync()
    assert [s.resyncs for s in subs] == [1, 1, 1]
    assert all(s.messages == [] for s in subs)


async def test_a_closed_broker_delivers_nothing() -> None:
    """Once the broker is closed, publishing reaches no subscriber."""
    broker, channels = await started()
    sub = Recorder()
    await channels.add("stream:" + STREAM, sub)
    await broker.close()
    broker.publish(committed(1))
    broker.publish_notice(Notice(STREAM, "{}"))
    assert sub.messages == []
