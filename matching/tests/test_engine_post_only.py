"""Post-only: reject with the would-match price, or reprice one tick behind (adjust)."""

from matching.engine import POST_ONLY, POST_ONLY_ADJUST, POST_ONLY_WOULD_MATCH, PRICE_OUTSIDE_BAND
from matching.engine.testing import Harness, final, rejects, trades


def test_post_only_that_would_match_is_rejected_with_price():
    h = Harness()
    h.sell(1, 100, 5)
    ev = h.buy(2, 102, 1, flags=POST_ONLY)
    assert rejects(ev) == [(POST_ONLY_WOULD_MATCH, "post_only", 100)]
    assert trades(ev) == []
    assert h.depth() == ([], [(100, 5, 1)])


def test_post_only_that_does_not_cross_rests():
    h = Harness()
    h.sell(1, 100, 5)
    ev = h.buy(2, 99, 1, flags=POST_ONLY)
    assert final(ev, 2) == ("new", None, 0, 1)


def test_post_only_adjust_reprices_one_tick_behind_best_opposite():
    h = Harness()
    h.sell(1, 100, 5)
    h.buy(2, 90, 5)
    ev = h.buy(3, 105, 1, flags=POST_ONLY_ADJUST)
    assert trades(ev) == []
    assert ev[-1][10] == 99
    ev = h.sell(4, 80, 1, flags=POST_ONLY_ADJUST)
    assert ev[-1][10] == 100  # best bid is now 99
    assert h.depth() == ([(99, 1, 1), (90, 5, 1)], [(100, 6, 2)])


def test_post_only_adjust_outside_band_is_rejected():
    h = Harness(price_min=100)
    h.sell(1, 100, 5)
    ev = h.buy(2, 100, 1, flags=POST_ONLY_ADJUST)
    assert rejects(ev)[0][0] == PRICE_OUTSIDE_BAND


def test_amend_of_post_only_to_crossing_price_is_rejected_and_order_unchanged():
    h = Harness()
    h.sell(1, 100, 5)
    h.buy(2, 95, 1, flags=POST_ONLY)
    ev = h.amend(2, price=100)
    assert rejects(ev) == [(POST_ONLY_WOULD_MATCH, None, 100)]
    assert h.depth()[0] == [(95, 1, 1)]
