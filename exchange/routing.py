"""WebSocket routes: the streaming API (docs/websocket.md)."""

import json

from django.urls import path, re_path

from exchange.consumers import StreamConsumer

STREAM_PATH = "/ws/v1"


async def websocket_not_found(scope, receive, send) -> None:
    """A handshake on any other path is refused with a 404 saying where the stream is (a
    JSON body where the server can send one, else a plain refusal: 403). Without this route
    Channels raised "No route found" for each one: a 500 and a traceback in the log."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps(
        {
            "error": "NotFound",
            "code": -1005,
            "message": f"no WebSocket endpoint at {scope['path']}: the stream is at {STREAM_PATH}",
        }
    ).encode()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": 404,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


websocket_urlpatterns: list = [
    path(STREAM_PATH.lstrip("/"), StreamConsumer.as_asgi()),
    re_path(r"", websocket_not_found),
]
