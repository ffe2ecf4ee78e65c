"""Cursor pagination for every list endpoint (stable under inserts, no page counting)."""

import base64
import hashlib
from urllib import parse

from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.utils.urls import replace_query_param

from exchange.query_params import whole_number

# The largest id a bigint column holds: a cursor's position is compared with one.
MAX_ID = 2**63 - 1


class CursorPage(CursorPagination):
    """Newest first by id; `?limit=` up to 1000; the response's `next` carries the cursor."""

    ordering = "-id"
    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 1000
    # What the schema says of the views it paginates itself (the audit API's had said only
    # "Number of results to return per page."); the others list PAGE_PARAMETERS.
    page_size_query_description = "Items per page, 1-1000 (default 100)."
    cursor_query_description = "The position in `next` or `previous`."

    def get_page_size(self, request) -> int:
        """`limit` when given: ASCII digits from 1 to max_page_size. DRF's own reading fell
        back to the default for "abc", "0" or "-1" and read an Arabic-Indic one ("\\u0661") as 1."""
        return whole_number(
            request,
            self.page_size_query_param,
            default=self.page_size,
            low=1,
            high=self.max_page_size,
        )

    def paginate_queryset(self, queryset, request, view=None):
        self.list_tag = list_tag(request.path)
        return super().paginate_queryset(queryset, request, view)

    def encode_cursor(self, cursor) -> str:
        """DRF's encoding, with the tag of the list it pages (`e`, see `list_tag`)."""
        tokens = {}
        if cursor.offset != 0:
            tokens["o"] = str(cursor.offset)
        if cursor.reverse:
            tokens["r"] = "1"
        if cursor.position is not None:
            tokens["p"] = cursor.position
        tokens["e"] = self.list_tag
        encoded = base64.b64encode(parse.urlencode(tokens).encode("ascii")).decode("ascii")
        return replace_query_param(self.base_url, self.cursor_query_param, encoded)

    def decode_cursor(self, request):
        """DRF's decoding, and a position that is an id: a cursor is opaque but not signed,
        and a crafted one ("p=abc", "p=1.5") reached the id comparison and failed (500). A
        cursor must also be strict base64 of DRF's own fields: "!!" or "AAAAAAAA" decoded to
        nothing DRF knew and served the first page, silently starting a client over. And it
        must be one this list handed out: a cursor of /fills (a trade id) sent to /orders was
        read as an order id, and served a page of orders from an arbitrary point, silently."""
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is not None and not _cursor_is_wellformed(encoded, list_tag(request.path)):
            raise NotFound(self.invalid_cursor_message)
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            position = cursor.position
            if not (
                position.isascii()
                and position.isdigit()
                and len(position) <= len(str(MAX_ID))  # int() refuses over 4,300 digits
                and int(position) <= MAX_ID
            ):
                raise NotFound(self.invalid_cursor_message)
        return cursor


def list_tag(path: str) -> str:
    """What a cursor says of the list it pages: a digest of the list's path (/api/v1/orders,
    /api/v1/trades/AAPL), so that a cursor sent to another list is refused, not read there."""
    return hashlib.sha256(path.encode()).hexdigest()[:12]


def _cursor_is_wellformed(encoded: str, tag: str) -> bool:
    """Strict base64 of a query string of DRF's cursor fields (o, r, p) and the tag `e` of the
    list it was handed out for, which must be `tag`; or empty, the start."""
    if not encoded:
        return True
    try:
        text = base64.b64decode(encoded.encode("ascii"), validate=True).decode("ascii")
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError
        return False
    fields = parse.parse_qs(text, keep_blank_values=True)
    return set(fields) <= {"o", "r", "p", "e"} and fields.get("e") == [tag]


# The query parameters of every cursor-paginated list, for its OpenAPI description.
PAGE_PARAMETERS = [
    OpenApiParameter("limit", int, description=CursorPage.page_size_query_description),
    OpenApiParameter("cursor", str, description=CursorPage.cursor_query_description),
]


def page_of(serializer_class: type[serializers.Serializer]) -> serializers.Serializer:
    """The OpenAPI shape of a page of `serializer_class` items (views that paginate by hand:
    the schema had said a plain array, and a client generated from it could read no list)."""
    name = serializer_class.__name__.removesuffix("Serializer")
    return inline_serializer(
        name=f"Paginated{name}List",
        fields={
            "next": serializers.URLField(allow_null=True, help_text="The next page, or null."),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer_class(many=True),
        },
    )
