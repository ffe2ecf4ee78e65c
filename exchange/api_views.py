"""The REST API of the trading core (/api/v1): thin adapters over services and selectors."""

import datetime as dt
import re
import time

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import APIException
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api_key_auth import ApiKeyPermission
from exchange import selectors, services
from exchange.api_errors import error_answer
from exchange.errors import echoed, trading_error
from exchange.models import Order
from exchange.order_answers import mass_cancel_answer, order_changed_answer, order_placed_answer
from exchange.pagination import PAGE_PARAMETERS, CursorPage, page_of
from exchange.query_params import (
    PAGE_QUERY,
    KnownQueryParameters,
    symbol_filter,
    time_range_check,
    whole_number,
)
from exchange.serializers import (
    ISO_DATETIME,
    InstrumentSerializer,
    OrderAmendSerializer,
    OrderPlaceSerializer,
    OrderSerializer,
    PublicTradeSerializer,
    UserFillSerializer,
    mid_str,
    money_str,
    order_representation,
    price_str,
    public_trade_representation,
    quantity_str,
    user_fill_representations,
)

ERROR = inline_serializer(
    "Error",
    fields={
        "error": serializers.CharField(),
        "code": serializers.IntegerField(),
        "message": serializers.CharField(),
        "field": serializers.CharField(required=False),
        "order_id": serializers.IntegerField(required=False),
        # InsufficientBalance and BalanceLimitExceeded name the asset.
        "asset": serializers.CharField(required=False),
    },
)


def placed_response(order: Order, command_id: int | None, created: bool) -> Response:
    """201 with the engine's result, 202 while pending, 400 for an engine rejection."""
    code, body = order_placed_answer(order, command_id, created)
    return Response(body, status=code)


def changed_response(order: Order, command_id: int) -> Response:
    """200 with the order after a cancel/amend, 202 if pending, 400 if the engine refused."""
    code, body = order_changed_answer(order, command_id)
    return Response(body, status=code)


# The instants a time filter accepts: far enough inside Python's and PostgreSQL's ranges that
# a window or bucket computed from one (candles go back 1,000 days) cannot overflow.
EARLIEST_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST_TIME = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


def parse_time(request: Request, name: str) -> dt.datetime | None:
    """An optional ISO 8601 query parameter as an aware UTC datetime (no zone: UTC); an instant
    between two microseconds (up to 9 decimal places are taken) is the later microsecond, so
    that a stored time (kept to the microsecond) is before it exactly when it was: Django's
    parser cut the digits past six off, and `end=...00.0000001Z` left out an order of
    ...00.000000, before that end."""
    instant = parse_time_ns(request, name)
    if instant is None:
        return None
    value, past_microsecond = instant
    return value + dt.timedelta(microseconds=1) if past_microsecond else value


def parse_time_ns(request: Request, name: str) -> tuple[dt.datetime, int] | None:
    """An optional ISO 8601 query parameter as (the aware UTC datetime to the microsecond below
    it, the nanoseconds past that microsecond, 0-999)."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        # parse_datetime raises ValueError for a well-formed impossible one (February 30th).
        text = raw.strip()
        # RFC 3339 allows "t" and "z"; Django's parser takes them upper case.
        value = parse_datetime(text.upper()) if ISO_DATETIME.match(text) else None
        if value is not None:
            value = value if timezone.is_aware(value) else value.replace(tzinfo=dt.UTC)
            value = value.astimezone(dt.UTC)  # OverflowError past year 9999 in UTC
    except (ValueError, OverflowError):
        value = None
    if value is None or not EARLIEST_TIME <= value < LATEST_TIME:
        raise trading_error(
            "InvalidParameter",
            f"{name} must be an ISO 8601 date-time from 1970 to 8999 (e.g. 2026-11-25T14:22:12Z)",
            field=name,
        )
    fraction = SUB_MICROSECOND.search(text)
    return value, int(fraction[1].ljust(3, "0")) if fraction else 0


# The digits of a time's fraction of a second past the sixth (ISO_DATETIME allows nine).
SUB_MICROSECOND = re.compile(r"[.,][0-9]{6}([0-9]{1,3})")


ORDER_STATUS_FILTERS = ("open", "closed", *Order.Status.values)


def order_status_filter(request: Request) -> str | None:
    """The orders list's optional `status`: a status, `open` or `closed` (an unknown one had
    matched nothing: an empty list, as if the user had no such orders)."""
    value = request.query_params.get("status")
    if value is not None and value not in ORDER_STATUS_FILTERS:
        raise trading_error(
            "InvalidParameter",
            f"status must be one of {', '.join(ORDER_STATUS_FILTERS)}; got {echoed(value)}",
            field="status",
        )
    return value


class OrdersView(KnownQueryParameters, APIView):
    """Place an order, list your orders, cancel all your open orders."""

    query_parameters = {
        "GET": ("symbol", "status", "start", "end", *PAGE_QUERY),
        "POST": (),
        # Without `symbol` every open order on every symbol is cancelled: a misspelt one
        # (`symbols`) is refused, not read as no filter.
        "DELETE": ("symbol",),
    }

    # What an API key needs (accounts.api_key_auth.ApiKeyPermission) and what a request costs
    # of the caller's rate limits (accounts.rate_limits).
    key_permissions = {"GET": "read", "POST": "trade", "DELETE": "trade"}
    rate_weights = {
        "GET": {"requests": 5},
        "POST": {"requests": 1, "orders": 1},
        "DELETE": {"requests": 5, "orders": 5},
    }

    @extend_schema(
        operation_id="order_place",
        request=OrderPlaceSerializer,
        responses={
            200: OrderSerializer,
            201: OrderSerializer,
            202: OrderSerializer,
            400: ERROR,
            409: ERROR,
            415: ERROR,
        },
        description=(
            "Waits up to 2 s for the matching engine: 201 with the result (fills, average "
            "price), or 202 with status pending_new (the order is durable either way). "
            "Repeating a client_order_id with the same body returns the order (200)."
        ),
    )
    def post(self, request: Request) -> Response:
        sent = None
        try:
            sent = request.data  # MalformedRequest when it is not JSON
            serializer = OrderPlaceSerializer(data=sent)
            serializer.is_valid(raise_exception=True)
            placement = services.order_place(
                user=request.user, request=serializer.to_request(), http_request=request
            )
        except APIException as exc:
            code, error = error_answer(exc)
            services.order_refusal_record(
                user=request.user, sent=sent, status=code, error=error, http_request=request
            )
            return Response(error, status=code)
        return placed_response(placement.order, placement.command_id, placement.created)

    @extend_schema(
        operation_id="orders_list",
        parameters=[
            OpenApiParameter("symbol", str),
            OpenApiParameter(
                "status",
                str,
                enum=list(ORDER_STATUS_FILTERS),
                description="A status, `open` (can still trade) or `closed`.",
            ),
            OpenApiParameter("start", dt.datetime),
            OpenApiParameter("end", dt.datetime),
            *PAGE_PARAMETERS,
        ],
        responses={200: page_of(OrderSerializer), 400: ERROR},
    )
    def get(self, request: Request) -> Response:
        start, end = parse_time(request, "start"), parse_time(request, "end")
        time_range_check(start, end)
        orders = selectors.orders_for_user(
            user=request.user,
            symbol=symbol_filter(request),
            status=order_status_filter(request),
            start=start,
            end=end,
        )
        paginator = CursorPage()
        page = paginator.paginate_queryset(orders, request, view=self)
        return paginator.get_paginated_response([order_representation(o) for o in page])

    @extend_schema(
        operation_id="orders_mass_cancel",
        parameters=[OpenApiParameter("symbol", str, description="Only this symbol.")],
        responses={
            202: inline_serializer(
                "MassCancel",
                fields={"command_ids": serializers.ListField(child=serializers.IntegerField())},
            ),
            400: ERROR,
        },
    )
    def delete(self, request: Request) -> Response:
        if request.stream is not None:  # a body, whatever it reads as
            # A bot that sent {"symbol": ...} in the body cancelled every order on every symbol,
            # and so did a body that reads as nothing ([], {}, null) after that was refused.
            try:
                sent = request.data
            except APIException:  # not JSON: refused as a body all the same
                sent = None
            name = next(iter(sent), None) if isinstance(sent, dict) else None
            raise trading_error(
                "UnexpectedParameter",
                "DELETE /orders takes no body: send the symbol as a query parameter "
                "(?symbol=); without it every open order is cancelled",
                field=name,
            )
        command_ids = services.orders_mass_cancel(
            user=request.user,
            actor=request.user,
            symbol=request.query_params.get("symbol"),
            http_request=request,
        )
        code, body = mass_cancel_answer(command_ids)
        return Response(body, status=code)


class OrderDetailView(KnownQueryParameters, APIView):
    """One of your orders by id (or by client_order_id): read, cancel, amend."""

    lookup = "order_id"
    query_parameters = {"GET": (), "DELETE": (), "PATCH": ()}
    key_permissions = {"GET": "read", "DELETE": "trade", "PATCH": "trade"}
    rate_weights = {"DELETE": {"requests": 1, "orders": 1}, "PATCH": {"requests": 1, "orders": 1}}

    def order(self, request: Request, key) -> Order:
        if self.lookup == "order_id":
            return selectors.order_for_user(user=request.user, order_id=key)
        return selectors.order_for_user(user=request.user, client_order_id=key)

    @extend_schema(responses={200: OrderSerializer, 404: ERROR})
    def get(self, request: Request, key) -> Response:
        order = self.order(request, key)
        return Response(order_representation(order, selectors.fills_for_order(order)))

    @extend_schema(responses={200: OrderSerializer, 202: OrderSerializer, 400: ERROR, 404: ERROR})
    def delete(self, request: Request, key) -> Response:
        order = None
        try:
            order = self.order(request, key)
            command = services.order_cancel(order=order, actor=request.user, http_request=request)
        except APIException as exc:
            services.order_change_refusal_record(
                user=request.user, kind="cancel", sent={self.lookup: key}, order=order, exc=exc,
                http_request=request,
            )  # fmt: skip
            raise
        return changed_response(order, command.pk)

    @extend_schema(
        request=OrderAmendSerializer,
        responses={200: OrderSerializer, 202: OrderSerializer, 400: ERROR, 404: ERROR},
        description="`quantity` is the new total (fills included); a price change or a larger "
        "quantity loses time priority, a smaller one keeps it.",
    )
    def patch(self, request: Request, key) -> Response:
        order = None
        try:
            order = self.order(request, key)
            serializer = OrderAmendSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            command = services.order_amend(
                order=order, actor=request.user, http_request=request, **serializer.validated_data
            )
        except APIException as exc:
            try:
                body = request.data
            except APIException:  # not JSON: the error says so
                body = None
            sent = {self.lookup: key, **(body if isinstance(body, dict) else {})}
            services.order_change_refusal_record(
                user=request.user, kind="amend", sent=sent, order=order, exc=exc,
                http_request=request,
            )  # fmt: skip
            raise
        return changed_response(order, command.pk)


class OrderByClientIdView(OrderDetailView):
    lookup = "client_order_id"


class FillsView(KnownQueryParameters, APIView):
    """Your fills, newest first."""

    rate_weights = {"GET": {"requests": 5}}
    query_parameters = {"GET": ("symbol", *PAGE_QUERY)}

    @extend_schema(
        operation_id="fills_list",
        parameters=[OpenApiParameter("symbol", str), *PAGE_PARAMETERS],
        responses={200: page_of(UserFillSerializer), 400: ERROR},
    )
    def get(self, request: Request) -> Response:
        trades = selectors.fills_for_user(user=request.user, symbol=symbol_filter(request))
        paginator = CursorPage()
        page = paginator.paginate_queryset(trades, request, view=self)
        return paginator.get_paginated_response(
            [fill for trade in page for fill in user_fill_representations(trade, request.user)]
        )


class PublicView(KnownQueryParameters, APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    query_parameters = {"GET": ()}


class TimeView(PublicView):
    @extend_schema(
        operation_id="server_time",
        responses={
            200: inline_serializer(
                "ServerTime",
                fields={
                    "server_time": serializers.DateTimeField(),
                    "server_time_ns": serializers.IntegerField(),
                },
            )
        },
    )
    def get(self, request: Request) -> Response:
        now_ns = time.time_ns()
        moment = dt.datetime.fromtimestamp(now_ns // 1_000_000_000, tz=dt.UTC).replace(
            microsecond=(now_ns // 1000) % 1_000_000
        )
        return Response({"server_time": moment, "server_time_ns": now_ns})


class SymbolsView(PublicView):
    @extend_schema(operation_id="symbols_list", responses={200: InstrumentSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(InstrumentSerializer(selectors.instruments_listed(), many=True).data)


class BookLevelSerializer(serializers.Serializer):
    price = serializers.CharField()
    quantity = serializers.CharField()
    orders = serializers.IntegerField()


class OrderBookView(PublicView):
    query_parameters = {"GET": ("depth",)}

    @extend_schema(
        operation_id="orderbook",
        parameters=[OpenApiParameter("depth", int, description="Levels per side, 1-50.")],
        responses={
            200: inline_serializer(
                "OrderBook",
                fields={
                    "symbol": serializers.CharField(),
                    "seq": serializers.IntegerField(),
                    "bids": BookLevelSerializer(many=True),
                    "asks": BookLevelSerializer(many=True),
                },
            ),
            400: ERROR,
        },
    )
    def get(self, request: Request, symbol: str) -> Response:
        instrument = selectors.instrument_by_symbol(symbol)
        depth = whole_number(request, "depth", default=50, low=1, high=50)
        return Response(selectors.book_depth(instrument=instrument, depth=depth))


class SpreadView(PublicView):
    @extend_schema(
        operation_id="orderbook_spread",
        responses={
            200: inline_serializer(
                "Spread",
                fields={
                    "symbol": serializers.CharField(),
                    "seq": serializers.IntegerField(),
                    "best_bid": serializers.CharField(allow_null=True),
                    "best_ask": serializers.CharField(allow_null=True),
                    "spread": serializers.CharField(allow_null=True),
                    "spread_bps": serializers.CharField(
                        allow_null=True,
                        help_text="spread / mid x 10,000, rounded to 2 decimal places (half to "
                        "even).",
                    ),
                    "mid": serializers.CharField(
                        allow_null=True,
                        help_text="(best bid + best ask) / 2, exact: one decimal place more "
                        "than a price.",
                    ),
                },
            ),
            400: ERROR,
        },
    )
    def get(self, request: Request, symbol: str) -> Response:
        instrument = selectors.instrument_by_symbol(symbol)
        data = selectors.book_spread(instrument=instrument)
        for key in ("best_bid", "best_ask", "spread"):
            data[key] = price_str(instrument, data[key])
        if data["mid"] is not None:
            data["mid"] = mid_str(instrument, data["mid"])
            data["spread_bps"] = str(data["spread_bps"])
        return Response(data)


class TradesView(PublicView):
    query_parameters = {"GET": PAGE_QUERY}

    @extend_schema(
        operation_id="trades_recent",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of(PublicTradeSerializer), 400: ERROR, 404: ERROR},
    )
    def get(self, request: Request, symbol: str) -> Response:
        instrument = selectors.instrument_by_symbol(symbol)
        paginator = CursorPage()
        page = paginator.paginate_queryset(
            selectors.trades_recent(instrument=instrument), request, view=self
        )
        return paginator.get_paginated_response([public_trade_representation(t) for t in page])


class TickerView(PublicView):
    @extend_schema(
        operation_id="ticker",
        responses={
            200: inline_serializer(
                "Ticker",
                fields={
                    name: serializers.CharField(allow_null=True)
                    for name in (
                        "symbol",
                        "status_reason",
                        "last_price",
                        "best_bid",
                        "best_bid_size",
                        "best_ask",
                        "best_ask_size",
                        "volume_24h",
                        "quote_volume_24h",
                        "high_24h",
                        "low_24h",
                        "open_24h",
                        "change_24h",
                        "change_pct_24h",
                    )
                }
                | {
                    "trades_24h": serializers.IntegerField(),
                    "status": serializers.ChoiceField(choices=selectors.TICKER_STATUSES),
                },
            ),
            400: ERROR,
        },
    )
    def get(self, request: Request, symbol: str) -> Response:
        instrument = selectors.instrument_by_symbol(symbol)
        data = selectors.ticker_24h(instrument=instrument)
        for key in ("last_price", "best_bid", "best_ask", "high_24h", "low_24h", "open_24h"):
            data[key] = price_str(instrument, data[key])
        data["change_24h"] = price_str(instrument, data["change_24h"])
        for key in ("volume_24h", "best_bid_size", "best_ask_size"):
            data[key] = quantity_str(instrument, data[key])
        data["quote_volume_24h"] = money_str(instrument, data["quote_volume_24h"])
        if data["change_pct_24h"] is not None:
            data["change_pct_24h"] = str(data["change_pct_24h"])
        return Response(data)


class CandleSerializer(serializers.Serializer):
    open_time = serializers.DateTimeField(help_text="Start of the bucket (UTC).")
    open = serializers.CharField()
    high = serializers.CharField()
    low = serializers.CharField()
    close = serializers.CharField()
    volume = serializers.CharField(help_text="Base quantity traded.")
    quote_volume = serializers.CharField()
    trades = serializers.IntegerField()


class CandlesView(PublicView):
    query_parameters = {"GET": ("interval", "limit", "end")}

    MAX_LIMIT = 1000

    @extend_schema(
        operation_id="candles",
        parameters=[
            OpenApiParameter(
                "interval",
                str,
                required=True,
                enum=list(selectors.CANDLE_INTERVALS),
                description="Bucket width; buckets are aligned to UTC (1d = a UTC day).",
            ),
            OpenApiParameter("limit", int, description="Latest buckets, 1-1000 (default 500)."),
            OpenApiParameter(
                "end", dt.datetime, description="Only trades before this instant (default now)."
            ),
        ],
        responses={
            200: inline_serializer(
                "Candles",
                fields={
                    "symbol": serializers.CharField(),
                    "interval": serializers.CharField(),
                    "candles": CandleSerializer(many=True),
                    "last_trade_id": serializers.IntegerField(
                        allow_null=True,
                        help_text="The highest trade id counted in these candles (null when "
                        "none): a client folding live `trades.{symbol}` frames into the latest "
                        "candle folds only those with a higher `trade_id`.",
                    ),
                },
            ),
            400: ERROR,
        },
        description="OHLC and volume built from the trades, oldest first; a bucket without a "
        "trade is left out. The last candle is still forming while its bucket lasts.",
    )
    def get(self, request: Request, symbol: str) -> Response:
        instrument = selectors.instrument_by_symbol(symbol)
        interval = request.query_params.get("interval", "")
        if interval not in selectors.CANDLE_INTERVALS:
            raise trading_error(
                "InvalidParameter",
                f"interval must be one of {', '.join(selectors.CANDLE_INTERVALS)}",
                field="interval",
            )
        limit = whole_number(request, "limit", default=500, low=1, high=self.MAX_LIMIT)
        end, end_extra_ns = parse_time_ns(request, "end") or (timezone.now(), 0)
        rows = selectors.candles_for_instrument(
            instrument=instrument,
            interval=interval,
            limit=limit,
            end=end,
            end_extra_ns=end_extra_ns,
        )
        candles = [
            {
                "open_time": row["open_time"],
                **{
                    key: price_str(instrument, row[key]) for key in ("open", "high", "low", "close")
                },
                "volume": quantity_str(instrument, row["volume"]),
                "quote_volume": money_str(instrument, row["quote_volume"]),
                "trades": row["trades"],
            }
            for row in rows
        ]
        last_trade_id = max((row["last_trade_id"] for row in rows), default=None)
        return Response(
            {
                "symbol": instrument.symbol,
                "interval": interval,
                "candles": candles,
                "last_trade_id": last_trade_id,
            }
        )


class ExchangeMetricsView(KnownQueryParameters, APIView):
    """Volume, trades and fee revenue net of rebates, per symbol and per quote asset (staff)."""

    query_parameters = {"GET": ()}

    permission_classes = [IsAdminUser, ApiKeyPermission]

    @extend_schema(
        operation_id="exchange_metrics",
        responses={
            200: inline_serializer(
                "ExchangeMetrics",
                fields={
                    "symbols": serializers.ListField(child=serializers.DictField()),
                    "totals": serializers.ListField(child=serializers.DictField()),
                },
            )
        },
    )
    def get(self, request: Request) -> Response:
        metrics = selectors.exchange_metrics()
        money = ("quote_volume", "maker_fees", "taker_fees", "rebates_paid", "net_fee_revenue")
        for row in metrics["symbols"] + metrics["totals"]:
            places = row.pop("quote_precision")
            for key in money:
                row[key] = f"{row[key]:.{places}f}"
            if "volume" in row:
                instrument = selectors.instrument_by_symbol(row["symbol"])
                row["volume"] = quantity_str(instrument, row["volume"])
        return Response(metrics)
