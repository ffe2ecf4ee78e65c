"""The live demo: a market maker quoting both sides of every demo instrument around a drifting
reference price, and takers crossing now and then. It trades through `order_place` like any
client, so a newcomer sees a moving book and trade tape."""

import logging
import random
import time
from decimal import ROUND_DOWN, Decimal

from django.contrib.auth import get_user_model
from django.db import close_old_connections, transaction

from accounts.funds import DEMO_FUNDS, demo_funds_grant
from accounts.models import LedgerAccount
from exchange.api_errors import ApiError
from exchange.models import Instrument, Order
from exchange.order_rules import OrderRequest
from exchange.selectors import reference_price
from exchange.services import order_cancel, order_place
from exchange.view_threads import query_log_forget

logger = logging.getLogger(__name__)

START_PRICES = {"AAPL": Decimal("190.00"), "MSFT": Decimal("420.00"), "BTC-USD": Decimal("60000")}
QUOTE_LEVELS = 4


@transaction.atomic
def demo_user(username: str):
    """The demo account `username`, created and funded on first use (also an account made
    before it had money)."""
    User = get_user_model()
    user, created = User.objects.get_or_create(
        username=username, defaults={"email": f"{username}@demo.exchange.local"}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    if not LedgerAccount.objects.filter(user=user).exists():
        demo_funds_grant(user=user, amounts=DEMO_FUNDS)
    return user


class DemoMarket:
    """One step per call: drift each reference, requote the maker's ladder, maybe take."""

    def __init__(self, *, seed: int = 7) -> None:
        self.random = random.Random(seed)
        self.maker = demo_user("demo-mm")
        self.takers = [demo_user(f"demo-taker-{n}") for n in range(1, 4)]
        self.references: dict[str, Decimal] = {}
        self.quotes: dict[str, list[Order]] = {}

    def instruments(self) -> list[Instrument]:
        return list(Instrument.objects.filter(status=Instrument.Status.TRADING))

    def reference(self, instrument: Instrument) -> Decimal:
        if instrument.symbol not in self.references:
            last = reference_price(instrument)
            self.references[instrument.symbol] = (
                last or START_PRICES.get(instrument.symbol) or Decimal(100)
            )
        drift = Decimal(self.random.gauss(0, 0.0008)).quantize(Decimal("0.000001"))
        price = self.references[instrument.symbol] * (1 + drift)
        self.references[instrument.symbol] = price.quantize(instrument.tick_size.normalize())
        return self.references[instrument.symbol]

    def size(self, instrument: Instrument, notional: Decimal) -> Decimal:
        ref = self.references[instrument.symbol]
        units = (notional / ref / instrument.lot_size).to_integral_value(ROUND_DOWN)
        quantity = max(units * instrument.lot_size, instrument.min_quantity)
        return max(quantity, (instrument.min_notional / ref).quantize(instrument.lot_size) * 2)

    def place(self, user, **fields) -> Order | None:
        try:
            return order_place(user=user, request=OrderRequest(**fields)).order
        except ApiError as exc:
            logger.info("demo order refused: %s (%s)", exc.message, fields)
            return None

    def requote(self, instrument: Instrument) -> None:
        ref = self.reference(instrument)
        tick = instrument.tick_size.normalize()
        step = max(tick, (ref * Decimal("0.0005")).quantize(tick))
        for order in self.quotes.pop(instrument.symbol, []):
            try:
                order.refresh_from_db()
                order_cancel(order=order, actor=self.maker, reason="requote")
            except ApiError:
                pass  # already filled or cancelled
        ladder = []
        for level in range(1, QUOTE_LEVELS + 1):
            quantity = self.size(instrument, Decimal(2000) * level)
            for side, price in (("buy", ref - step * level), ("sell", ref + step * level)):
                order = self.place(
                    self.maker,
                    symbol=instrument.symbol,
                    side=side,
                    order_type="limit",
                    price=price,
                    quantity=quantity,
                    post_only_adjust=True,
                )
                if order is not None:
                    ladder.append(order)
        self.quotes[instrument.symbol] = ladder

    def take(self, instrument: Instrument) -> None:
        taker = self.random.choice(self.takers)
        side = self.random.choice(["buy", "sell"])
        self.place(
            taker,
            symbol=instrument.symbol,
            side=side,
            order_type="market",
            quantity=self.size(instrument, Decimal(self.random.randint(500, 5000))),
        )

    def step(self) -> None:
        for instrument in self.instruments():
            self.requote(instrument)
            if self.random.random() < 0.4:
                self.take(instrument)


def demo_market_run(*, interval: float = 1.0, steps: int | None = None, seed: int = 7) -> None:
    """Run the demo until interrupted (or for `steps` steps)."""
    market = DemoMarket(seed=seed)
    done = 0
    while steps is None or done < steps:
        close_old_connections()
        query_log_forget()  # each step is a request of its own
        market.step()
        done += 1
        time.sleep(interval)
