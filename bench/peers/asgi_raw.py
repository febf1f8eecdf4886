"""Floor of the hub's own stack: a raw ASGI app under uvicorn (same server, options and WebSocket
implementation as the hub), in-process channels, no framework, no Redis, no storage.

POST /publish/{channel} sends each msg to the channel's sockets (one ``websocket.send`` each);
WS /ws/{channel} accepts and waits. Shows what uvicorn alone costs per frame and per idle socket.
Run: uvicorn bench.peers.asgi_raw:app
"""

import json

channels: dict[str, set] = {}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif m["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if scope["type"] == "websocket":
        channel = path.removeprefix("/ws/")
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        subs = channels.setdefault(channel, set())
        subs.add(send)
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            subs.discard(send)
        return
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    msgs = json.loads(body)
    msgs = msgs.get("events", [msgs])
    subs = channels.get(path.removeprefix("/publish/"), set())
    for m in msgs:
        text = json.dumps(m)
        for s in list(subs):
            try:
                await s({"type": "websocket.send", "text": text})
            except Exception:
                subs.discard(s)
    out = json.dumps({"published": len(msgs)}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": out})
