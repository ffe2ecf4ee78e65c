"""WebSocket routes: the streaming API (docs/websocket.md)."""

from django.urls import path

from exchange.consumers import StreamConsumer

websocket_urlpatterns: list = [
    path("ws/v1", StreamConsumer.as_asgi()),
]
