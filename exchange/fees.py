"""Fee rates frozen on each order at placement, in parts per million of the notional.

Until fee tiers land, every order gets the brief's Phase-1 schedule: maker 0.10%, taker 0.20%.
"""

PHASE1_MAKER_FEE_PPM = 1_000
PHASE1_TAKER_FEE_PPM = 2_000


def fee_rates_for(*, user, instrument) -> tuple[int, int]:
    """(maker_ppm, taker_ppm) for an order of `user` on `instrument`."""
    return PHASE1_MAKER_FEE_PPM, PHASE1_TAKER_FEE_PPM
