"""Who you are, balances, ledger history, deposits and withdrawals over the API (thin
adapters)."""

from django.contrib.auth import get_user_model
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors
from accounts.funds import deposit_create, unknown_asset_error, withdrawal_create
from accounts.models import LedgerAccount, LedgerEntry, LedgerPosting
from accounts.signing import KeyCredentials
from exchange.pagination import PAGE_PARAMETERS, CursorPage, page_of
from exchange.query_params import PAGE_QUERY, KnownQueryParameters
from exchange.serializers import (
    DecimalString,
    RequestBodySerializer,
    TextOnly,
    refuse_unknown_fields,
)


class BalanceSerializer(serializers.Serializer):
    asset = serializers.CharField()
    available = serializers.CharField()
    held = serializers.CharField(help_text="reserved for open orders")
    total = serializers.CharField()
    version = serializers.IntegerField(
        help_text="the version of the last balance event for this asset (the `orders` "
        "channel's `balance` frames carry it): of a REST answer and a live event, the one with "
        "the higher version is the newer balance"
    )


class PostingSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    entry_id = serializers.IntegerField()
    kind = serializers.CharField(help_text="deposit, withdrawal, hold, release or trade")
    account = serializers.CharField(help_text="available or held")
    asset = serializers.CharField()
    amount = serializers.CharField(help_text="signed decimal string")
    order_id = serializers.IntegerField(allow_null=True)
    trade_id = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()


class FundsMoveSerializer(RequestBodySerializer):
    # As sent, as an order's symbol: "USD\n" had been trimmed and moved USD.
    asset = TextOnly(max_length=16, trim_whitespace=False)
    amount = DecimalString()

    def to_internal_value(self, data):
        refuse_unknown_fields(self, data)
        return super().to_internal_value(data)


class FundsMovedSerializer(serializers.Serializer):
    entry_id = serializers.IntegerField()
    asset = serializers.CharField()
    amount = serializers.CharField()
    balance = BalanceSerializer()


def _posting_order_id(posting: LedgerPosting, trade_sides: dict) -> int | None:
    """The user's own order a posting belongs to. A trade's entry names the taker's order; the
    buyer's postings are their held quote and available base, the seller's the other two."""
    entry = posting.entry
    side = trade_sides.get(entry.trade_id) if entry.kind == LedgerEntry.Kind.TRADE else None
    if side is None:
        return entry.order_id
    base, buy_order_id, sell_order_id = side
    buyers = (posting.account.kind == LedgerAccount.Kind.HOLD) == (posting.asset != base)
    return buy_order_id if buyers else sell_order_id


def _posting_representation(posting: LedgerPosting, places: dict[str, int], trade_sides) -> dict:
    entry = posting.entry
    order_id = _posting_order_id(posting, trade_sides)
    return {
        "id": posting.pk,
        "entry_id": entry.pk,
        "kind": entry.kind,
        "account": "available" if posting.account.kind == "cash" else "held",
        "asset": posting.asset,
        "amount": selectors.amount_str(posting.amount, places.get(posting.asset)),
        "order_id": order_id,
        "trade_id": entry.trade_id,
        "created_at": entry.created_at,
    }


def _balance_of(user, asset: str) -> dict:
    for row in selectors.balances_for_user(user=user):
        if row["asset"] == asset:
            return row
    return {"asset": asset, "available": "0", "held": "0", "total": "0", "version": 0}


def _target_user(request: Request, user_id: int, *, staff_may_act: bool):
    """The user named in the path: yourself, or (where staff may act) anyone; else 404."""
    if user_id == request.user.pk:
        return request.user
    if staff_may_act and request.user.is_staff:
        found = get_user_model().objects.filter(pk=user_id).first()
        if found is not None:
            return found
    raise NotFound(f"no user {user_id}")


class MeKeySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    permissions = serializers.ListField(child=serializers.CharField())


class MeSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    email = serializers.EmailField()
    api_key = MeKeySerializer(
        allow_null=True, help_text="the key that signed this request (null for a web session)"
    )


class MeView(KnownQueryParameters, APIView):
    """Who you are: your user id (the `{user_id}` of /users/{user_id}/... ) and, for a signed
    request, its key and permissions. An API client had no way to learn its user id but the
    account page's HTML or the WebSocket login answer."""

    query_parameters = {"GET": ()}

    @extend_schema(operation_id="me", responses={200: MeSerializer})
    def get(self, request: Request) -> Response:
        credentials = request.auth if isinstance(request.auth, KeyCredentials) else None
        key = None
        if credentials is not None:
            key = {"id": credentials.id, "permissions": sorted(credentials.permissions)}
        return Response({"user_id": request.user.pk, "email": request.user.email, "api_key": key})


class BalancesView(KnownQueryParameters, APIView):
    """Your balances per asset: available, held for open orders, and total."""

    query_parameters = {"GET": ()}

    @extend_schema(operation_id="balances_list", responses={200: BalanceSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(selectors.balances_for_user(user=request.user))


class LedgerView(KnownQueryParameters, APIView):
    """Your ledger postings (every movement of your money), newest first."""

    query_parameters = {"GET": ("asset", *PAGE_QUERY)}

    @extend_schema(
        operation_id="ledger_list",
        parameters=[OpenApiParameter("asset", str), *PAGE_PARAMETERS],
        responses={200: page_of(PostingSerializer)},
    )
    def get(self, request: Request) -> Response:
        asset = request.query_params.get("asset")
        # An asset that does not exist (or an empty one) had listed nothing, or everything.
        if (
            asset is not None
            and asset not in selectors.asset_precisions_cached()
            and asset not in selectors.asset_precisions()  # listed a moment ago
        ):
            raise unknown_asset_error(asset)
        postings = selectors.ledger_postings_for_user(user=request.user, asset=asset)
        paginator = CursorPage()
        page = paginator.paginate_queryset(postings, request, view=self)
        places = selectors.asset_precisions_cached(assets={p.asset for p in page})
        trade_sides = selectors.ledger_trade_sides(
            trade_ids=[p.entry.trade_id for p in page if p.entry.trade_id is not None]
        )
        return paginator.get_paginated_response(
            [_posting_representation(p, places, trade_sides) for p in page]
        )


class _FundsMoveView(KnownQueryParameters, APIView):
    """POST {"asset", "amount"} for the user in the path, through one funds service. Moving
    money takes an API key's `withdraw` permission, a deposit too: it had fallen back to
    `trade`, and a staff member's trading key credited a million USD to a user."""

    staff_may_act = False
    key_permissions = {"POST": "withdraw"}
    query_parameters = {"POST": ()}

    def move(self, request: Request, user_id: int, service) -> Response:
        user = _target_user(request, user_id, staff_may_act=self.staff_may_act)
        body = FundsMoveSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        entry = service(
            user=user,
            asset=data["asset"],
            amount=data["amount"],
            actor=request.user,
            http_request=request,
        )
        return _moved(entry, data, user)


class DepositView(_FundsMoveView):
    """Credit a deposit: staff for any user; a user for themselves only in the demo (capped)."""

    staff_may_act = True

    @extend_schema(
        operation_id="deposit_create",
        request=FundsMoveSerializer,
        responses={201: FundsMovedSerializer},
    )
    def post(self, request: Request, user_id: int) -> Response:
        return self.move(request, user_id, deposit_create)


class WithdrawView(_FundsMoveView):
    """Withdraw from your available balance (an API key needs the `withdraw` permission)."""

    @extend_schema(
        operation_id="withdraw_create",
        request=FundsMoveSerializer,
        responses={201: FundsMovedSerializer},
    )
    def post(self, request: Request, user_id: int) -> Response:
        return self.move(request, user_id, withdrawal_create)


def _moved(entry, data: dict, user) -> Response:
    return Response(
        {
            "entry_id": entry.pk,
            "asset": data["asset"],
            "amount": selectors.amount_str(
                data["amount"],
                selectors.asset_precisions_cached(assets=[data["asset"]]).get(data["asset"]),
            ),
            "balance": _balance_of(user, data["asset"]),
        },
        status=status.HTTP_201_CREATED,
    )
