"""WebSocket routes: the streaming API (docs/websocket.md)."""

from django.urls import path, re_path

from exchange.consumers import StreamConsumer

STREAM_PATH = "ws/v1"


async def websocket_refused(scope, receive, send) -> None:
    """Refuse the handshake (403): a foreign Origin (exchange.asgi), and any path but the
    stream's, where Channels raised "No route found" for each one: a 500 and a traceback in
    the log. (A 404 with a JSON body, the denial-response extension, made uvicorn log an error
    per probe: it never counts such a handshake as complete.)"""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})


websocket_urlpatterns: list = [
    path(STREAM_PATH, StreamConsumer.as_asgi()),
    re_path(r"", websocket_refused),
]
