"""Fee rates frozen on each order at placement, in parts per million of the notional.

The rates are those of the user's fee tier (accounts/fee_tiers.py): the tier assigned from their
30-day volume and quote presence, else the base tier (Retail: maker 0.10%, taker 0.20%). A
negative maker rate is a rebate. Cached per process for `FEE_RATES_CACHE_SECONDS`.
"""

from accounts.fee_tiers import FeeRates, user_fee_rates, user_fee_tier_rates


def fee_rates_for(*, user, instrument) -> tuple[int, int]:
    """(maker_ppm, taker_ppm) for an order of `user` on `instrument` (same on every instrument)."""
    return user_fee_rates(user_id=user.pk)


def fee_tier_rates_for(*, user, instrument) -> FeeRates:
    """The rates `fee_rates_for` gives and the tier, volume and uptime they were chosen from."""
    return user_fee_tier_rates(user_id=user.pk)
