"""Django Channels + channels_redis: a group per channel, group_send from an async Django view.

Layer: ``CHANNELS_LAYER=pubsub`` (default; channels_redis.pubsub.RedisPubSubChannelLayer) or
``core`` (channels_redis.core.RedisChannelLayer).
Run: REDIS_URL=redis://127.0.0.1:PORT uvicorn bench.peers.channels_app:application
"""

import json
import os

import django
from django.conf import settings

LAYERS = {
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "core": "channels_redis.core.RedisChannelLayer",
}
settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["channels"],
    MIDDLEWARE=[],
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": LAYERS[os.environ.get("CHANNELS_LAYER", "pubsub")],
            "CONFIG": {"hosts": [os.environ["REDIS_URL"]]},
        }
    },
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


class Subscriber(AsyncWebsocketConsumer):
    async def connect(self):
        self.group = self.scope["url_route"]["kwargs"]["channel"]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def bench_event(self, event):
        await self.send(text_data=event["text"])


@csrf_exempt
async def publish(request, channel):
    body = json.loads(request.body)
    msgs = body.get("events", [body])
    layer = get_channel_layer()
    for m in msgs:
        await layer.group_send(channel, {"type": "bench.event", "text": json.dumps(m)})
    return JsonResponse({"published": len(msgs)})


urlpatterns = [path("publish/<str:channel>", publish)]
application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "websocket": URLRouter([path("ws/<str:channel>", Subscriber.as_asgi())]),
    }
)
