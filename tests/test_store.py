"""The streams store conformance suite: every behaviour, once, for every store.

``store`` is parametrized over the embedded :class:`~hub.infra.store.file.FileStore` (a
SQLite file) and :class:`~hub.infra.store.remote.RemoteStore` on a real libSQL server
(``sqld``, :mod:`tests.sqld`) over ``ws://`` and over ``http://``. A few tests at the
end concern the remote store alone: the auth token, a write lock held elsewhere and a
server lost then back run on sqld. The Hrana stand-in (:mod:`tests.hrana_standin`)
stays for what sqld cannot be made to do on cue, each test saying so: count the
requests that reach it (round trips), hold every answer back a random while (answers
out of commit order) and answer ``SQLITE_BUSY`` after a lock time-out the test sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import libsql_client
import pytest

from hub.errors import Busy, Conflict, Unavailable
from hub.events import Event, NewEvent, Opcode, parse_draft
from hub.infra.store import AppendResult, NotFirstEvent, Store, StreamArchived, StreamChanged
from hub.infra.store.file import FileStore
from hub.infra.store.remote import RemoteStore
from tests.conftest import timeout
from tests.hrana_standin import HranaStandin
from tests.sqld import Sqld, ed25519_keypair, jwt

STREAM = "ord-1"


def ev(event_id: str, opcode: int = Opcode.INVOICE_PAYMENT, **fields: Any) -> NewEvent:
    """A validated event, as the hub hands it to the store."""
    return parse_draft({"id": event_id, "opcode": opcode, **fields}, stream_id=STREAM)


def order_create(event_id: str, customer: str = "c1", restaurant: str = "r1") -> NewEvent:
    return ev(
        event_id,
        Opcode.ORDER_CREATE,
        nodeId="node-c1",
        payload={"customer": customer, "restaurant": restaurant, "total": 42.5},
    )


def task_assign(event_id: str, driver: str) -> NewEvent:
    return ev(event_id, Opcode.TASK_ASSIGN, payload={"driver": driver})


class Commits:
    """A commit listener that keeps what it is told, in order."""

    def __init__(self) -> None:
        self.seen: list[AppendResult] = []
        self.arrived = asyncio.Event()

    def committed(self, result: AppendResult) -> None:
        self.seen.append(result)
        self.arrived.set()


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture
def standin() -> Iterator[HranaStandin]:
    """A Hrana stand-in server, no token required; answers come back out of order."""
    with HranaStandin(reply_jitter=0.005) as server:
        yield server


def remote_url(server: HranaStandin | Sqld, transport: str) -> str:
    return server.ws_url if transport == "ws" else server.http_url


@pytest.fixture
def commits() -> Commits:
    """What the ``store`` fixture's commit listener was told."""
    return Commits()


@pytest.fixture(params=["file", "ws", "http"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, commits: Commits
) -> AsyncIterator[Store]:
    """An opened store of each kind, telling ``commits`` of every commit; closed afterwards."""
    s: Store
    if request.param == "file":
        s = FileStore(f"file:{tmp_path / 'streams.db'}")
    else:
        server: Sqld = request.getfixturevalue("sqld")
        s = RemoteStore(remote_url(server, request.param))
    await s.open(commits)
    try:
        yield s
    finally:
        await s.close()


async def all_events(store: Store) -> list[Event]:
    return await store.read_inbox(None, 0, 100_000)


# -- the conformance suite -----------------------------------------------------------


async def test_append_and_read_round_trip(store: Store) -> None:
    """Appended events come back with every field, seq 1..n, growing pos, contract JSON."""
    first = await store.append(STREAM, [order_create("e1")], first=True)
    batch = [
        ev("e2", Opcode.INVOICE_PAYMENT, nodeId="node-c1", pointId="pt-1", delta=-42.5,
           payload={"method": "card"}, ts="2026-11-27T12:30:00Z"),
        ev("e3", Opcode.SALE_OUT, nodeId="node-r1", pointId="pt-shw", delta=-1),
    ]  # fmt: skip
    second = await store.append(STREAM, batch)

    events = first.events + second.events
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].pos < events[1].pos < events[2].pos
    assert first.new == first.events
    assert second.new == second.events
    assert await store.read_stream(STREAM, 0, 100) == events

    e2 = events[1]
    assert (e2.id, e2.stream_id, e2.opcode, e2.node_id, e2.point_id, e2.delta) == (
        "e2", STREAM, Opcode.INVOICE_PAYMENT, "node-c1", "pt-1", -42.5,
    )  # fmt: skip
    assert json.loads(e2.json) == {
        "id": "e2",
        "streamId": STREAM,
        "seq": 2,
        "pos": e2.pos,
        "opcode": 203,
        "name": "INVOICE_PAYMENT",
        "nodeId": "node-c1",
        "pointId": "pt-1",
        "delta": -42.5,
        "payload": {"method": "card"},
        "ts": "2026-11-27T12:30:00.000Z",
    }
    stored = (await store.read_stream(STREAM, 0, 100))[0]
    assert stored.payload_obj == {"customer": "c1", "restaurant": "r1", "total": 42.5}
    assert stored.point_id is None
    assert stored.delta == 0


async def test_read_stream_since_and_limit(store: Store) -> None:
    """read_stream returns the events after ``since``, in seq order, at most ``limit``."""
    await store.append(STREAM, [ev(f"e{i}") for i in range(1, 8)])
    page = await store.read_stream(STREAM, 2, 3)
    assert [e.seq for e in page] == [3, 4, 5]
    assert [e.seq for e in await store.read_stream(STREAM, 5, 100)] == [6, 7]
    assert await store.read_stream(STREAM, 7, 100) == []
    assert await store.read_stream("no-such-stream", 0, 100) == []


async def test_read_inbox_from_membership_on(store: Store) -> None:
    """A member's inbox starts at the event that named it; None reads every stream."""
    await store.append(STREAM, [order_create("a1"), ev("a2")], first=True)
    await store.append(STREAM, [task_assign("a3", "d1"), ev("a4", Opcode.ORDER_SHIP)])
    await store.append("ord-2", [order_create("b1", customer="c2")], first=True)

    def keys(events: list[Event]) -> list[tuple[str, int]]:
        return [(e.stream_id, e.seq) for e in events]

    assert keys(await store.read_inbox("d1", 0, 100)) == [(STREAM, 3), (STREAM, 4)]
    assert keys(await store.read_inbox("c1", 0, 100)) == [(STREAM, s) for s in (1, 2, 3, 4)]
    assert keys(await store.read_inbox("c2", 0, 100)) == [("ord-2", 1)]
    assert keys(await store.read_inbox("r1", 0, 100)) == [
        (STREAM, 1), (STREAM, 2), (STREAM, 3), (STREAM, 4), ("ord-2", 1),
    ]  # fmt: skip
    assert await store.read_inbox("stranger", 0, 100) == []

    everything = await store.read_inbox(None, 0, 100)
    assert len(everything) == 5
    assert [e.pos for e in everything] == sorted(e.pos for e in everything)
    after = everything[1].pos
    assert await store.read_inbox(None, after, 2) == everything[2:4]
    assert await store.read_inbox("d1", everything[2].pos, 100) == [everything[3]]


async def test_retry_returns_stored_event(store: Store) -> None:
    """The same id with the same content returns the stored event and writes nothing."""
    original = await store.append(STREAM, [order_create("e1")], first=True)
    again = order_create("e1")  # a new parse: another server-side ts, not given by the writer
    retried = await store.append(STREAM, [again], first=True)

    assert retried.new == []
    assert retried.events == original.events
    assert retried.members == original.members
    assert await store.read_stream(STREAM, 0, 100) == original.events
    info = await store.stream_info(STREAM)
    assert info is not None
    assert info.last_seq == 1
    nxt = await store.append(STREAM, [ev("e2")])
    assert nxt.events[0].seq == 2


async def test_other_content_under_same_id_conflicts(store: Store) -> None:
    """The same id with other content raises Conflict and writes nothing."""
    original = await store.append(STREAM, [ev("e1", payload={"amount": 1})])
    with pytest.raises(Conflict):
        await store.append(STREAM, [ev("e1", payload={"amount": 2})])
    assert await all_events(store) == original.events
    # Ids are unique within a stream: the same id in another stream is another event.
    other = await store.append("ord-2", [ev("e1", payload={"amount": 2})])
    assert [(e.id, e.stream_id, e.seq) for e in other.new] == [("e1", "ord-2", 1)]
    assert await all_events(store) == [*original.events, *other.new]


async def test_batch_is_all_or_nothing(store: Store) -> None:
    """A batch whose third event conflicts writes none of the batch."""
    original = await store.append(STREAM, [ev("e1", payload={"amount": 1})])
    with pytest.raises(Conflict):
        await store.append(STREAM, [ev("e2"), ev("e3"), ev("e1", payload={"amount": 2})])
    assert await all_events(store) == original.events
    info = await store.stream_info(STREAM)
    assert info is not None
    assert info.last_seq == 1
    result = await store.append(STREAM, [ev("e2"), ev("e3")])
    assert [e.seq for e in result.events] == [2, 3]


async def test_batch_mixing_retry_and_new_commits_only_new(store: Store) -> None:
    """A batch repeating a stored event returns it as stored and commits the others."""
    e1 = ev("e1")
    original = await store.append(STREAM, [e1])
    result = await store.append(STREAM, [ev("e0"), e1, ev("e2")])
    assert [e.id for e in result.events] == ["e0", "e1", "e2"]
    assert result.events[1] == original.events[0]
    assert [(e.id, e.seq) for e in result.new] == [("e0", 2), ("e2", 3)]
    assert [e.id for e in await store.read_stream(STREAM, 0, 100)] == ["e1", "e0", "e2"]


async def test_first_on_non_empty_stream_is_refused(store: Store) -> None:
    """``first=True`` on a stream that has events raises NotFirstEvent, writes nothing."""
    await store.append(STREAM, [order_create("e1")], first=True)
    with pytest.raises(NotFirstEvent):
        await store.append(STREAM, [order_create("e2", customer="c9")], first=True)
    assert [e.id for e in await all_events(store)] == ["e1"]
    info = await store.stream_info(STREAM)
    assert info is not None
    assert info.last_seq == 1
    assert "c9" not in info.members


async def test_first_event_retry_is_returned_not_refused(store: Store) -> None:
    """Retrying a stream's first event with ``first=True`` returns it, even after more."""
    original = await store.append(STREAM, [order_create("e1")], first=True)
    await store.append(STREAM, [ev("e2")])
    retried = await store.append(STREAM, [order_create("e1")], first=True)
    assert retried.events == original.events
    assert retried.new == []


async def test_seq_gap_free_under_concurrent_appenders(store: Store) -> None:
    """64 concurrent appenders to one stream get seq 1..n exactly once, pos in seq order."""
    writers, each = 64, 5

    async def writer(w: int) -> list[Event]:
        out: list[Event] = []
        for i in range(each):
            out += (await store.append(STREAM, [ev(f"w{w}-{i}")])).events
        return out

    async with asyncio.timeout(timeout(60)):
        results = await asyncio.gather(*(writer(w) for w in range(writers)))
    answered = sorted(e.seq for events in results for e in events)
    assert answered == list(range(1, writers * each + 1))

    stored = await store.read_stream(STREAM, 0, 10_000)
    assert [e.seq for e in stored] == list(range(1, writers * each + 1))
    assert len({e.id for e in stored}) == writers * each
    assert [e.pos for e in stored] == sorted(e.pos for e in stored)
    info = await store.stream_info(STREAM)
    assert info is not None
    assert info.last_seq == writers * each


async def test_delete_keeps_seq_and_never_reuses_pos(store: Store) -> None:
    """delete_stream removes the events, keeps last_seq; later pos exceed every pos given."""
    first = await store.append(STREAM, [order_create("e1"), ev("e2"), ev("e3")], first=True)
    top = max(e.pos for e in first.events)
    assert await store.delete_stream(STREAM) == 3
    assert await store.read_stream(STREAM, 0, 100) == []
    assert await store.read_inbox("c1", 0, 100) == []
    info = await store.stream_info(STREAM)
    assert info is not None
    assert info.archived
    assert info.last_seq == 3

    other = await store.append("ord-2", [ev("f1")])
    assert other.events[0].pos > top


async def test_archived_stream_refuses_appends(store: Store) -> None:
    """An append to an archived stream raises StreamArchived and writes nothing."""
    await store.append(STREAM, [order_create("e1")], first=True)
    await store.delete_stream(STREAM)
    with pytest.raises(StreamArchived):
        await store.append(STREAM, [ev("e2")])
    with pytest.raises(StreamArchived):
        await store.append(STREAM, [order_create("e3")], first=True)
    assert await all_events(store) == []
    info = await store.stream_info(STREAM)
    assert info is not None
    assert info.last_seq == 1


async def test_stream_info_members_and_last_seq(store: Store) -> None:
    """stream_info reports last_seq and each member with the pos it joined at."""
    assert await store.stream_info(STREAM) is None
    created = await store.append(STREAM, [order_create("e1"), ev("e2")], first=True)
    assigned = await store.append(STREAM, [task_assign("e3", "d1")])
    again = await store.append(STREAM, [task_assign("e4", "d1")])  # already a member

    joined, assigned_at = created.events[0].pos, assigned.events[0].pos
    expected = {"c1": joined, "r1": joined, "d1": assigned_at}
    assert created.members == {"c1": joined, "r1": joined}
    assert assigned.members == expected
    assert again.members == expected
    info = await store.stream_info(STREAM)
    assert info is not None
    assert (info.stream_id, info.last_seq, info.archived) == (STREAM, 4, False)
    assert info.members == expected


def task_unassign(event_id: str, driver: str) -> NewEvent:
    return ev(event_id, Opcode.TASK_UNASSIGN, payload={"driver": driver, "reason": "declined"})


async def test_a_membership_ends_at_task_unassign_and_starts_again(store: Store) -> None:
    """TASK_UNASSIGN ends its driver's membership (gone from stream_info, the append's
    members, and the inbox after that event); a later TASK_ASSIGN starts a new span, and
    the inbox replays exactly the two spans. The append that ended it reports the span."""
    await store.append(STREAM, [order_create("e1")], first=True)
    first = await store.append(STREAM, [task_assign("e2", "d1"), ev("e3")])
    left = await store.append(STREAM, [task_unassign("e4", "d1")])
    await store.append(STREAM, [ev("e5"), task_assign("e6", "d2"), task_unassign("e7", "d2")])
    back = await store.append(STREAM, [task_assign("e8", "d1"), ev("e9")])

    joined, ended = first.events[0].pos, left.events[0].pos
    assert "d1" not in left.members
    assert left.left == (("d1", joined, ended),)
    assert (await store.stream_info(STREAM)).members["d1"] == back.events[0].pos  # type: ignore[union-attr]
    inbox = await store.read_inbox("d1", 0, 100)
    assert [e.id for e in inbox] == ["e2", "e3", "e4", "e8", "e9"]
    assert [e.id for e in await store.read_inbox("d2", 0, 100)] == ["e6", "e7"]
    # Resumed from inside the first span, the replay is the same.
    assert [e.id for e in await store.read_inbox("d1", first.events[1].pos, 100)] == [
        "e4", "e8", "e9"]  # fmt: skip
    # A retried unassign ends nothing more and reports nothing.
    again = await store.append(STREAM, [task_unassign("e4", "d1")])
    assert again.new == []
    assert again.left == ()
    assert "d1" in again.members
    assert await store.find_streams(member="d2") == []
    assert await store.find_streams(member="d1") == [STREAM]


async def test_expected_seq_commits_only_onto_the_stream_it_was_decided_on(store: Store) -> None:
    """An append with ``expected`` commits only if the stream's last seq is still that
    (StreamChanged otherwise, nothing written); a retry of stored ids is still a retry."""
    await store.append(STREAM, [order_create("e1")], first=True)
    two = await store.append(STREAM, [ev("e2")], expected=1)
    assert two.events[0].seq == 2
    with pytest.raises(StreamChanged):
        await store.append(STREAM, [ev("e3")], expected=1)
    assert [e.id for e in await store.read_stream(STREAM, 0, 10)] == ["e1", "e2"]
    retried = await store.append(STREAM, [ev("e2")], expected=1)
    assert retried.new == []
    assert retried.events == two.events
    # Of two appends decided on the same seq, exactly one commits.
    outcomes = await asyncio.gather(
        store.append(STREAM, [ev("a")], expected=2),
        store.append(STREAM, [ev("b")], expected=2),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["AppendResult", "StreamChanged"]
    assert (await store.stream_info(STREAM)).last_seq == 3  # type: ignore[union-attr]


async def test_listener_hears_every_commit_in_order_before_the_caller(
    store: Store, commits: Commits
) -> None:
    """The commit listener gets each committing append once, in pos order, before its caller."""
    await listener_hears_every_commit_in_order(store, commits)


async def listener_hears_every_commit_in_order(store: Store, commits: Commits) -> None:
    """The body of the test above (run again on answers held back at random, at the end)."""
    seen = commits.seen

    async def writer(w: int) -> None:
        for i in range(3):
            result = await store.append(f"ord-{w % 4}", [ev(f"w{w}-{i}a"), ev(f"w{w}-{i}b")])
            assert any(r is result for r in seen)

    async with asyncio.timeout(timeout(60)):
        await asyncio.gather(*(writer(w) for w in range(32)))
    assert len(seen) == 32 * 3
    positions = [e.pos for r in seen for e in r.new]
    assert positions == sorted(positions)

    seen.clear()
    await store.append("ord-0", [ev("w0-0a")])  # a pure retry commits nothing
    assert seen == []


async def test_append_whose_caller_went_away_still_commits_and_is_handed_on(
    store: Store, commits: Commits
) -> None:
    """A cancelled caller does not stop its append: it commits and reaches the listener."""
    caller = asyncio.create_task(store.append(STREAM, [ev("e1")]))
    await asyncio.sleep(0)  # the append is under way
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    async with asyncio.timeout(timeout(10)):
        await commits.arrived.wait()
    assert [e.id for r in commits.seen for e in r.new] == ["e1"]
    assert [e.id for e in await store.read_stream(STREAM, 0, 100)] == ["e1"]


async def test_find_streams(store: Store) -> None:
    """find_streams filters unarchived streams by opcodes and member, oldest first."""
    await store.append("ord-a", [order_create("a1", customer="c1")], first=True)
    await store.append("ord-b", [order_create("b1", customer="c2")], first=True)
    await store.append("ord-c", [order_create("c1", customer="c1")], first=True)
    await store.append("ord-b", [task_assign("b2", "d1")])
    await store.append("ord-a", [ev("a2", Opcode.ORDER_DELIVER)])
    await store.append("ord-c", [ev("c2")])
    await store.delete_stream("ord-c")

    assert await store.find_streams() == ["ord-a", "ord-b"]
    assert await store.find_streams(having=Opcode.ORDER_CREATE, lacking=Opcode.ORDER_DELIVER) == [
        "ord-b"
    ]
    assert await store.find_streams(member="c1") == ["ord-a"]
    assert await store.find_streams(member="d1", having=Opcode.TASK_ASSIGN) == ["ord-b"]
    assert await store.find_streams(limit=1) == ["ord-a"]
    # several opcodes lacking: none of them
    assert await store.find_streams(lacking=(Opcode.ORDER_DELIVER, Opcode.TASK_ASSIGN)) == []
    assert await store.find_streams(lacking=(Opcode.ORDER_CANCEL, Opcode.TASK_ASSIGN)) == [
        "ord-a"]  # fmt: skip


async def test_streams_of_members_is_find_streams_for_each(store: Store) -> None:
    """streams_of_members answers for several members in one query what find_streams
    answers for each (the GPS asks it for the drivers pinging at once): open memberships
    only, unarchived streams, the opcode tests, oldest first, at most ``limit`` each."""
    await store.append("ord-a", [order_create("a1", customer="c1")], first=True)
    await store.append("ord-b", [order_create("b1", customer="c2")], first=True)
    await store.append("ord-c", [order_create("c1", customer="c1")], first=True)
    await store.append("ord-d", [order_create("d1", customer="c3")], first=True)
    await store.append("ord-b", [task_assign("b2", "d1")])
    await store.append("ord-c", [task_assign("c2", "d1")])
    await store.append("ord-d", [task_assign("d2", "d2"), task_unassign("d3", "d2")])
    await store.append("ord-d", [task_assign("d4", "d1")])
    await store.append("ord-a", [task_assign("a2", "d3"), ev("a3", Opcode.ORDER_DELIVER)])
    await store.append("ord-c", [ev("c3")])
    await store.delete_stream("ord-c")
    drivers = ["d1", "d2", "d3", "nobody"]
    cases = [(Opcode.TASK_ASSIGN, Opcode.ORDER_DELIVER, 20), (None, None, 1000),
             (Opcode.TASK_ASSIGN, None, 1), (None, (Opcode.ORDER_DELIVER, Opcode.ORDER_CANCEL), 5)]
    for having, lacking, limit in cases:
        got = await store.streams_of_members(drivers, having=having, lacking=lacking, limit=limit)
        each = {d: await store.find_streams(having=having, lacking=lacking, member=d, limit=limit)
                for d in drivers}  # fmt: skip
        assert got == each, (having, lacking, limit)
    assert await store.streams_of_members(
        drivers, having=Opcode.TASK_ASSIGN, lacking=Opcode.ORDER_DELIVER, limit=20
    ) == {"d1": ["ord-b", "ord-d"], "d2": [], "d3": [], "nobody": []}


async def test_stream_opcodes(store: Store) -> None:
    """stream_opcodes names which of the asked opcodes a stream holds, each with the seq
    of its last event, and no others."""
    await store.append("ord-a", [order_create("a1"), task_assign("a2", "d1")], first=True)
    await store.append("ord-a", [ev(f"a{i}", Opcode.ACCOUNT_PAYOUT) for i in range(3, 9)])
    await store.append("ord-b", [order_create("b1")], first=True)
    among = (Opcode.ORDER_CREATE, Opcode.TASK_ASSIGN, Opcode.ORDER_DELIVER)
    assert await store.stream_opcodes("ord-a", among) == {Opcode.ORDER_CREATE: 1,
                                                          Opcode.TASK_ASSIGN: 2}  # fmt: skip
    assert await store.stream_opcodes("ord-b", among) == {Opcode.ORDER_CREATE: 1}
    assert await store.stream_opcodes("ord-a", (Opcode.ACCOUNT_PAYOUT,)) == {
        Opcode.ACCOUNT_PAYOUT: 8}  # fmt: skip
    assert await store.stream_opcodes("nowhere", among) == {}


def fresh(opcode: int = Opcode.INVOICE_PAYMENT, stream: str = STREAM, **fields: Any) -> NewEvent:
    """An event without an id: the hub draws one (``fresh_id``), as for most appends."""
    return parse_draft({"opcode": opcode, **fields}, stream_id=stream)


async def test_appends_committed_together_get_what_each_would_alone(store: Store) -> None:
    """Concurrent appends of hub-drawn ids, committed in groups: the refused ones write
    nothing, the others get gap-free seqs per stream, rising pos, members, and read back
    exactly as answered."""
    await store.append("arch", [ev("a1")])
    await store.delete_stream("arch")
    await store.append("busy", [ev("b1")])
    order = {"customer": "c9", "restaurant": "r9", "total": 1}
    calls = [store.append(f"s{i % 3}", [fresh(), fresh()]) for i in range(30)]
    calls += [
        store.append("arch", [fresh()]),
        store.append("busy", [fresh(Opcode.ORDER_CREATE, payload=order)], first=True),
        store.append("new", [fresh(Opcode.ORDER_CREATE, payload=order)], first=True),
    ]
    async with asyncio.timeout(timeout(30)):
        results = await asyncio.gather(*calls, return_exceptions=True)
        assign = await store.append("new", [fresh(Opcode.TASK_ASSIGN, payload={"driver": "d9"})])
    *plain, archived, not_first, opened = results
    assert isinstance(archived, StreamArchived)
    assert isinstance(not_first, NotFirstEvent)
    assert all(isinstance(r, AppendResult) for r in [*plain, opened])
    answered = [e for r in [*plain, opened, assign] for e in r.events]  # type: ignore[union-attr]
    for i in range(3):
        got = [e for e in answered if e.stream_id == f"s{i}"]
        assert sorted(e.seq for e in got) == list(range(1, 21))
        assert [e.pos for e in sorted(got, key=lambda e: e.seq)] == sorted(e.pos for e in got)
    for r in plain:  # each request's two events are next to each other
        a, b = r.events  # type: ignore[union-attr]
        assert (b.seq, b.pos) == (a.seq + 1, a.pos + 1)
    stored = {e.id: e for e in await all_events(store)}
    assert len(stored) == len(answered) + 1  # and b1
    assert all(stored[e.id] == e for e in answered)
    assert [e.id for e in await store.read_stream("busy", 0, 10)] == ["b1"]
    assert await store.read_stream("arch", 0, 10) == []
    assert opened.members == {"c9": opened.events[0].pos, "r9": opened.events[0].pos}  # type: ignore[union-attr]
    assert assign.members["d9"] == assign.events[0].pos
    assert [e.id for e in await store.read_inbox("d9", 0, 10)] == [assign.events[0].id]


# -- the remote store alone ------------------------------------------------------------

transports = pytest.mark.parametrize("transport", ["ws", "http"])


@transports
async def test_remote_append_is_one_round_trip(standin: HranaStandin, transport: str) -> None:
    """An append is one Hrana batch request; a pure retry costs one more.

    On the Hrana stand-in: it counts the requests that reach it, which sqld does not report.
    """
    store = RemoteStore(remote_url(standin, transport))
    await store.open()
    try:
        await store.append(STREAM, [order_create("e1")], first=True)
        before = standin.counts()
        await store.append(STREAM, [task_assign("e2", "d1"), ev("e3"), ev("e4")])
        await store.append(STREAM, [ev("e5")])
        after = standin.counts()
        assert after.get(f"{transport}:batch", 0) - before.get(f"{transport}:batch", 0) == 2
        assert after.get(f"{transport}:execute", 0) == before.get(f"{transport}:execute", 0)

        before = standin.counts()
        await store.append(STREAM, [ev("e5")])
        after = standin.counts()
        assert after.get(f"{transport}:batch", 0) - before.get(f"{transport}:batch", 0) == 2
    finally:
        await store.close()


@transports
async def test_remote_appends_that_arrive_together_share_batches(
    standin: HranaStandin, commits: Commits, transport: str
) -> None:
    """Group commit: 200 appends sent at once (distinct streams, one stream refused, one
    retry with other content) travel in a few Hrana batches, not 200; each gets what it
    would alone, and the listener hears the committed ones once each, in pos order.

    On the Hrana stand-in: it counts the requests that reach it, which sqld does not report
    (the same appends against sqld: the conformance suite above and bench/remote_appends.py).
    """
    store = RemoteStore(remote_url(standin, transport))
    await store.open(commits)
    try:
        await store.append("arch", [ev("a1")])
        await store.delete_stream("arch")
        await store.append("taken", [ev("t1")])
        before = standin.counts().get(f"{transport}:batch", 0)
        calls = [store.append(f"g{i}", [ev(f"g{i}-1"), ev(f"g{i}-2")]) for i in range(200)]
        calls.insert(77, store.append("arch", [ev("a2")]))
        calls.insert(150, store.append("taken", [ev("t1", payload={"other": 1})]))
        async with asyncio.timeout(timeout(30)):
            results = await asyncio.gather(*calls, return_exceptions=True)
        batches = standin.counts().get(f"{transport}:batch", 0) - before
        assert isinstance(results.pop(150), Conflict)
        assert isinstance(results.pop(77), StreamArchived)
        assert all(isinstance(r, AppendResult) for r in results)
        for i, r in enumerate(results):
            assert [(e.id, e.seq) for e in r.events] == [(f"g{i}-1", 1), (f"g{i}-2", 2)]  # type: ignore[union-attr]
        # 4 sent at once, the rest in groups; each refused append costs its group a few
        # more (the halves run again) and a read of its stored ids.
        assert batches <= 40, batches
        heard = [e for r in commits.seen for e in r.new if e.stream_id.startswith("g")]
        assert len(heard) == 400
        assert [e.pos for e in heard] == sorted(e.pos for e in heard)
    finally:
        await store.close()


@transports
async def test_remote_listener_order_with_answers_out_of_order(
    standin: HranaStandin, commits: Commits, transport: str
) -> None:
    """The commit listener hears commits in pos order, each before its caller, however
    late each answer comes back.

    On the Hrana stand-in: its injected reply latency (``reply_jitter``) sends answers to
    concurrent appends back out of commit order on every run; sqld does so only now and
    then, too seldom to catch a listener told in answer order.
    """
    store = RemoteStore(remote_url(standin, transport))
    await store.open(commits)
    try:
        await listener_hears_every_commit_in_order(store, commits)
    finally:
        await store.close()


@transports
async def test_remote_sends_the_auth_token(
    sqld_factory: Callable[..., Sqld], transport: str
) -> None:
    """The configured token reaches the server; a wrong or missing one is Unavailable.

    On sqld verifying JWTs (EdDSA) with a key of the test's, as Turso does.
    """
    seed, public_key = ed25519_keypair()
    server = sqld_factory(jwt_key=public_key)
    url = remote_url(server, transport)
    good = RemoteStore(url, auth_token=jwt(seed))
    await good.open()
    try:
        result = await good.append(STREAM, [ev("e1")])
        assert result.events[0].seq == 1
    finally:
        await good.close()

    for token in (jwt(ed25519_keypair()[0]), "wrong-token", None):
        bad = RemoteStore(url, auth_token=token)
        with pytest.raises(Unavailable, match="auth token"):
            await bad.open()
        await bad.close()


@transports
@pytest.mark.parametrize("server_kind", ["sqld", "standin"])
async def test_remote_append_waits_for_a_write_lock_held_elsewhere(
    sqld_factory: Callable[..., Sqld], server_kind: str, transport: str
) -> None:
    """An append that meets a write lock held elsewhere commits once the lock is free.

    On sqld, which holds the append until the lock is free (a transaction it lets hold
    the lock 5 s at most). And on the Hrana stand-in, for what sqld never does here: its
    lock time-out (50 ms) makes it answer SQLITE_BUSY while the lock is held, and the
    store must run the refused append again.
    """
    held: contextlib.AbstractContextManager[HranaStandin | Sqld] = (
        contextlib.nullcontext(sqld_factory()) if server_kind == "sqld"
        else HranaStandin(lock_timeout=0.05)
    )  # fmt: skip
    with held as server:
        store = RemoteStore(remote_url(server, transport))
        await store.open()
        holder = libsql_client.create_client(server.ws_url)
        try:
            tx = holder.transaction()
            await tx.execute("INSERT INTO streams (streamId, lastSeq) VALUES ('held', 0)")
            append = asyncio.create_task(store.append(STREAM, [ev("e1")]))
            await asyncio.sleep(0.2)
            assert not append.done()
            await tx.commit()
            async with asyncio.timeout(timeout(10)):
                result = await append
            assert result.events[0].seq == 1
            assert await store.stream_info("held") is not None
        finally:
            await holder.close()
            await store.close()


async def test_remote_appends_waiting_for_a_batch_are_bounded(
    sqld: Sqld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While sqld holds every batch (its write lock held elsewhere), appends queue up to
    MAX_PENDING; the next is refused at once with 503 Busy and writes nothing; the queued
    ones commit once the lock is free."""
    monkeypatch.setattr("hub.infra.store.remote.MAX_PENDING", 10)
    store = RemoteStore(sqld.ws_url)
    await store.open()
    holder = libsql_client.create_client(sqld.ws_url)
    try:
        tx = holder.transaction()
        await tx.execute("INSERT INTO streams (streamId, lastSeq) VALUES ('held', 0)")
        waiting = [asyncio.create_task(store.append(f"q{i}", [ev(f"q{i}")])) for i in range(14)]
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in waiting)
        with pytest.raises(Busy, match="too many writes waiting"):
            await store.append("refused", [ev("r1")])
        await tx.commit()
        async with asyncio.timeout(timeout(10)):
            results = await asyncio.gather(*waiting)
        assert [r.events[0].seq for r in results] == [1] * 14
        assert await store.stream_info("refused") is None
    finally:
        await holder.close()
        await store.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@transports
async def test_remote_unreachable_database_is_unavailable(transport: str) -> None:
    """A server that refuses connections makes open() raise Unavailable."""
    scheme = "ws" if transport == "ws" else "http"
    store = RemoteStore(f"{scheme}://127.0.0.1:{_closed_port()}")
    with pytest.raises(Unavailable):
        await store.open()
    await store.close()


@transports
async def test_remote_lost_database_is_unavailable_then_recovers(
    sqld: Sqld, transport: str
) -> None:
    """While the server is gone every call raises Unavailable; once back, work resumes."""
    store = RemoteStore(remote_url(sqld, transport))
    try:
        await store.open()
        await store.append(STREAM, [ev("e1")])
        sqld.stop()
        with pytest.raises(Unavailable):
            await store.append(STREAM, [ev("e2")])
        with pytest.raises(Unavailable):
            await store.read_stream(STREAM, 0, 10)
        with pytest.raises(Unavailable):
            await store.ping()

        sqld.start()  # the same port, the same data
        await store.ping()
        result = await store.append(STREAM, [ev("e2")])
        assert result.events[0].seq == 2
    finally:
        await store.close()
        sqld.stop()
    await store.close()  # idempotent
    with pytest.raises(Unavailable):
        await store.ping()


async def test_a_streams_db_from_before_spans_is_migrated(tmp_path: Path) -> None:
    """A streams DB whose ``members`` has one row per (stream, tenant) and no ``untilSeq``
    (made before memberships could end) keeps every member when opened, and its
    memberships can then end and start again."""
    import sqlite3

    path = tmp_path / "streams.db"
    old = FileStore(f"file:{path}")
    await old.open()
    await old.append(STREAM, [order_create("e1"), task_assign("e2", "d1")], first=True)
    await old.close()
    conn = sqlite3.connect(path)
    with conn:
        rows = conn.execute("SELECT streamId, tenant, fromSeq, fromPos FROM members").fetchall()
        conn.execute("DROP TABLE members")
        conn.execute("CREATE TABLE members (streamId TEXT NOT NULL, tenant TEXT NOT NULL,"
                     " fromSeq INTEGER NOT NULL, fromPos INTEGER NOT NULL,"
                     " PRIMARY KEY (streamId, tenant)) WITHOUT ROWID")  # fmt: skip
        conn.executemany("INSERT INTO members VALUES (?, ?, ?, ?)", rows)
    conn.close()

    store = FileStore(f"file:{path}")
    await store.open()
    try:
        before = await store.stream_info(STREAM)
        assert before is not None
        assert set(before.members) == {"c1", "r1", "d1"}
        await store.append(STREAM, [task_unassign("e3", "d1")])
        await store.append(STREAM, [task_assign("e4", "d1")])
        assert [e.id for e in await store.read_inbox("d1", 0, 10)] == ["e2", "e3", "e4"]
    finally:
        await store.close()
