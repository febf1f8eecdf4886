"""The streams store: the durable, ordered event log (the seed's ``events`` table).

:class:`Store` is the interface; :func:`open_store` picks the implementation from the
``HUB_STREAMS_DB`` URL:

- ``file:PATH`` — :class:`hub.infra.store.file.FileStore`, the embedded default (one WAL
  connection owned by a writer thread, group commit, reader threads);
- ``libsql://``, ``wss://``, ``ws://``, ``https://``, ``http://`` —
  :class:`hub.infra.store.remote.RemoteStore` through libsql-client (the ``turso`` extra);
  with a read replica's URL as well (``HUB_STREAMS_READ_DB``),
  :class:`hub.infra.store.replica.ReplicaStore`: writes and decisions on the primary,
  event pages from the replica as far as they are complete, the rest from the primary.

Both keep the seed's columns (``id``, ``streamId``, ``opcode``, ``nodeId``,
``pointId``, ``delta``, ``payload``, ``ts``) plus ``seq`` (per stream, 1..n, no gaps)
and ``pos`` (global, AUTOINCREMENT so never reused after deletes), a ``streams``
table holding each stream's last ``seq`` (kept after archiving), and ``members``:
who may read a stream, from which event on and until which (docs/protocol.md §2, §6).
"""

from __future__ import annotations

from hub.infra.store.base import (
    SCHEMA,
    AppendResult,
    CommitListener,
    NotFirstEvent,
    Store,
    StreamArchived,
    StreamChanged,
    StreamInfo,
    find_streams_sql,
    members_named,
)

__all__ = [
    "SCHEMA",
    "AppendResult",
    "CommitListener",
    "NotFirstEvent",
    "Store",
    "StreamArchived",
    "StreamChanged",
    "StreamInfo",
    "find_streams_sql",
    "members_named",
    "open_store",
]


def open_store(url: str, *, auth_token: str | None = None, read_url: str | None = None) -> Store:
    """Return the store for ``url`` (not yet opened); ``read_url``: a read replica of it."""
    remote = {"libsql", "wss", "ws", "https", "http"}
    if read_url:
        if url.split(":", 1)[0].lower() not in remote:
            raise ValueError("a read replica (HUB_STREAMS_READ_DB) needs a remote streams DB")
        if read_url.split(":", 1)[0].lower() not in remote:
            raise ValueError(f"unsupported read replica URL {read_url!r} (libsql:, ws(s):,"
                             " http(s):)")  # fmt: skip
        from hub.infra.store.remote import RemoteStore
        from hub.infra.store.replica import REPLICA_TIMEOUT_S, ReplicaStore

        return ReplicaStore(
            RemoteStore(url, auth_token=auth_token),
            RemoteStore(read_url, auth_token=auth_token, read_only=True,
                        timeout=REPLICA_TIMEOUT_S),
        )  # fmt: skip
    if url.startswith("file:"):
        from hub.infra.store.file import FileStore

        return FileStore(url)
    scheme = url.split(":", 1)[0].lower()
    if scheme in remote:
        from hub.infra.store.remote import RemoteStore

        return RemoteStore(url, auth_token=auth_token)
    raise ValueError(f"unsupported streams DB URL {url!r} (file:, libsql:, ws(s):, http(s):)")
