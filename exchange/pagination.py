"""Cursor pagination for every list endpoint (stable under inserts, no page counting)."""

import base64
from urllib import parse

from django.utils.crypto import constant_time_compare, salted_hmac
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
        self.list_path = request.path
        return super().paginate_queryset(queryset, request, view)

    def encode_cursor(self, cursor) -> str:
        """DRF's encoding, signed for the list it pages (`e`, see `cursor_signature`)."""
        tokens = {}
        if cursor.offset != 0:
            tokens["o"] = str(cursor.offset)
        if cursor.reverse:
            tokens["r"] = "1"
        if cursor.position is not None:
            tokens["p"] = cursor.position
        tokens["e"] = cursor_signature(self.list_path, tokens)
        encoded = base64.b64encode(parse.urlencode(tokens).encode("ascii")).decode("ascii")
        return replace_query_param(self.base_url, self.cursor_query_param, encoded)

    def decode_cursor(self, request):
        """DRF's decoding of a cursor this list handed out, unchanged: a cursor of /fills (a
        trade id) sent to /orders had been read as an order id, and a position or offset edited
        by hand was read too, each serving a page from an arbitrary point, silently. A crafted
        one ("p=abc", "p=1.5") had reached the id comparison and failed (500), and "!!" or
        "AAAAAAAA" decoded to nothing DRF knew and served the first page, starting a client
        over: all are 404 "Invalid cursor"."""
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is not None and not _cursor_is_wellformed(encoded, request.path):
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


def cursor_signature(path: str, tokens: dict[str, str]) -> str:
    """The signature (`e`) of a cursor's fields for the list at `path` (/api/v1/orders,
    /api/v1/trades/AAPL): another list, or any field changed, and the cursor is refused."""
    message = "\n".join([path, *(f"{name}={tokens.get(name, '')}" for name in ("o", "r", "p"))])
    return salted_hmac("exchange.pagination.cursor", message, algorithm="sha256").hexdigest()[:20]


def _cursor_is_wellformed(encoded: str, path: str) -> bool:
    """Strict base64 of a query string of DRF's cursor fields (o, r, p), each once, signed for
    the list at `path` (`e`); or empty, the start."""
    if not encoded:
        return True
    try:
        text = base64.b64decode(encoded.encode("ascii"), validate=True).decode("ascii")
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError
        return False
    fields = parse.parse_qs(text, keep_blank_values=True)
    if not set(fields) <= {"o", "r", "p", "e"} or any(len(v) != 1 for v in fields.values()):
        return False
    tokens = {name: values[0] for name, values in fields.items()}
    signature = tokens.pop("e", "")
    return constant_time_compare(signature, cursor_signature(path, tokens))


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
