"""Archive of finished streams (temporary local-only version; replaced by the full module)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from hub.errors import Unavailable
from hub.events import STREAM_ID_RE, Event

__all__ = ["Archive", "ArchiveError", "LocalArchive", "open_archive"]


class ArchiveError(Unavailable):
    code = "archive_unavailable"


class Archive(Protocol):
    async def put(self, stream_id: str, events: Sequence[Event]) -> None: ...
    async def get(self, stream_id: str) -> list[Event] | None: ...
    async def close(self) -> None: ...


def _event(o: dict) -> Event:  # type: ignore[type-arg]
    return Event(o["id"], o["streamId"], o["seq"], o["pos"], o["opcode"], o["nodeId"],
                 o["pointId"], float(o["delta"]),
                 json.dumps(o["payload"], ensure_ascii=False, separators=(",", ":")), o["ts"])


class LocalArchive:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, stream_id: str) -> Path:
        if not STREAM_ID_RE.match(stream_id):
            raise ValueError(stream_id)
        return self.root / f"{stream_id}.json"

    async def put(self, stream_id: str, events: Sequence[Event]) -> None:
        body = "[" + ",".join(e.json for e in events) + "]"
        path = self._path(stream_id)

        def write() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise ArchiveError(str(exc)) from None
        if await self.get(stream_id) != list(events):
            raise ArchiveError("archive read-back differs")

    async def get(self, stream_id: str) -> list[Event] | None:
        path = self._path(stream_id)
        try:
            text = await asyncio.to_thread(path.read_text)
        except FileNotFoundError:
            return None
        return [_event(o) for o in json.loads(text)]

    async def close(self) -> None:
        return None


def open_archive(url: str) -> Archive:
    if url.startswith("file://"):
        return LocalArchive(Path(url[len("file://"):]))
    raise ValueError(f"unsupported archive URL {url!r}")
