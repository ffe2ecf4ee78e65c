"""WebSocket routes (the streaming protocol adds its consumer here)."""

websocket_urlpatterns: list = []
