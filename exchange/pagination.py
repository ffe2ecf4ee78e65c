"""Cursor pagination for every list endpoint (stable under inserts, no page counting)."""

from rest_framework.pagination import CursorPagination


class CursorPage(CursorPagination):
    """Newest first by id; `?limit=` up to 1000; the response's `next` carries the cursor."""

    ordering = "-id"
    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 1000
