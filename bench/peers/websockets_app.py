"""Ceiling: a bare ``websockets`` server using ``websockets.broadcast`` (no Redis, no storage).

WebSockets on PORT (/ws/{channel}); publish over HTTP POST /publish/{channel} on PORT+1 (the
``websockets`` server does not take POST requests, so a minimal HTTP/1.1 server on asyncio streams
serves them in the same event loop).
Run: python bench/peers/websockets_app.py PORT
"""

import asyncio
import json
import sys
from collections import defaultdict

from websockets.asyncio.server import broadcast, serve

channels: dict[str, set] = defaultdict(set)


async def handler(ws):
    channel = ws.request.path.removeprefix("/ws/")
    channels[channel].add(ws)
    try:
        await ws.wait_closed()
    finally:
        channels[channel].discard(ws)


async def http_publish(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            body = json.loads(await reader.readexactly(length))
            msgs = body.get("events", [body])
            conns = channels.get(path.removeprefix("/publish/"), ())
            for m in msgs:
                broadcast(conns, json.dumps(m))
            out = json.dumps({"published": len(msgs)}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(out)).encode()
                + b"\r\n\r\n"
                + out
            )
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None):
        server = await asyncio.start_server(http_publish, "127.0.0.1", port + 1)
        async with server:
            await asyncio.Future()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main(int(sys.argv[1])))
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
