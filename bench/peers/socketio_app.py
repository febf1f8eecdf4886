"""python-socketio ASGI + AsyncRedisManager; HTTP publish via Starlette mounted as other_asgi_app.

Clients join the room named by their ``?channel=`` query on connect.
Run: REDIS_URL=redis://127.0.0.1:PORT uvicorn bench.peers.socketio_app:app
"""

import json
import os
from urllib.parse import parse_qs

import socketio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

mgr = socketio.AsyncRedisManager(os.environ["REDIS_URL"])
sio = socketio.AsyncServer(async_mode="asgi", client_manager=mgr, cors_allowed_origins="*")


@sio.event
async def connect(sid, environ, auth=None):
    channel = parse_qs(environ.get("QUERY_STRING", "")).get("channel", [""])[0]
    await sio.enter_room(sid, channel)


async def publish(request):
    body = json.loads(await request.body())
    msgs = body.get("events", [body])
    channel = request.path_params["channel"]
    for m in msgs:
        await sio.emit("event", m, room=channel)
    return JSONResponse({"published": len(msgs)})


http = Starlette(routes=[Route("/publish/{channel}", publish, methods=["POST"])])
app = socketio.ASGIApp(sio, other_asgi_app=http)
