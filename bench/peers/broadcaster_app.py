"""broadcaster + Starlette, as its README shows it: publish over HTTP, one subscription per WebSocket.

Run: REDIS_URL=redis://127.0.0.1:PORT uvicorn bench.peers.broadcaster_app:app
"""

import json
import os
from contextlib import AsyncExitStack, asynccontextmanager

from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

broadcast = Broadcast(os.environ["REDIS_URL"])


async def publish(request):
    body = await request.json()
    msgs = body.get("events", [body])
    channel = request.path_params["channel"]
    for m in msgs:
        await broadcast.publish(channel=channel, message=json.dumps(m))
    return JSONResponse({"published": len(msgs)})


async def ws(websocket):
    await websocket.accept()
    async with broadcast.subscribe(channel=websocket.path_params["channel"]) as subscriber:
        async for event in subscriber:
            await websocket.send_text(event.message)


@asynccontextmanager
async def lifespan(app):
    await broadcast.connect()
    # Workaround for a race in broadcaster 0.3.1's Redis backend (with redis-py 8): the first
    # subscribe() wakes the listener before redis-py records the channel, so listen() returns at
    # once and the listener waits for the next *new* channel; a channel subscribed first and
    # alone (scenario A) then never receives anything. Holding one subscription from startup
    # makes every later subscribe() find the pubsub already subscribed.
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(broadcast.subscribe(channel="bench-keepalive"))
        yield
    await broadcast.disconnect()


app = Starlette(
    routes=[
        Route("/publish/{channel}", publish, methods=["POST"]),
        WebSocketRoute("/ws/{channel}", ws),
    ],
    lifespan=lifespan,
)
