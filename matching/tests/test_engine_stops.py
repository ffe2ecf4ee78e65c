"""Stop-market and stop-limit orders: trigger on last trade price, order, cascades."""

from matching.engine import STOP_LIMIT, STOP_MARKET
from matching.engine.testing import Harness, fills, final, order_events


def trade_at(h, price, oid_base):
    h.sell(oid_base, price, 1, user=50)
    h.buy(oid_base + 1, price, 1, user=51)


def test_stop_rests_untriggered_outside_the_book():
    h = Harness()
    trade_at(h, 100, 900)
    ev = h.place(1, True, 2, 0, order_type=STOP_MARKET, stop_price=110)
    assert final(ev, 1) == ("untriggered", None, 0, 2)
    assert h.depth() == ([], [])


def test_buy_stop_triggers_when_last_reaches_stop_and_becomes_market():
    h = Harness()
    trade_at(h, 100, 900)
    h.place(1, True, 2, 0, order_type=STOP_MARKET, stop_price=105)
    h.sell(2, 106, 5, user=3)
    ev = h.sell(3, 105, 1, user=3)
    ev += h.buy(4, 105, 1, user=4)  # trade at 105 triggers the stop
    statuses = [e[6] for e in order_events(ev, 1)]
    assert statuses == ["triggered", "filled"]
    assert (2, 1, 106, 2) in fills(ev)


def test_sell_stop_limit_becomes_limit_and_rests():
    h = Harness()
    trade_at(h, 100, 900)
    h.place(1, False, 3, 90, order_type=STOP_LIMIT, stop_price=95)
    ev = []
    ev += h.sell(2, 95, 1, user=3)
    ev += h.buy(3, 95, 1, user=4)
    assert [e[6] for e in order_events(ev, 1)] == ["triggered", "new"]
    assert h.depth()[1] == [(90, 3, 1)]


def test_stop_already_true_at_arrival_triggers_immediately():
    h = Harness()
    trade_at(h, 100, 900)
    h.sell(5, 101, 5, user=3)
    ev = h.place(1, True, 1, 0, order_type=STOP_MARKET, stop_price=99)
    assert [e[6] for e in order_events(ev, 1)] == ["triggered", "filled"]


def test_no_last_price_means_no_trigger():
    h = Harness()
    ev = h.place(1, True, 1, 0, order_type=STOP_MARKET, stop_price=1)
    assert final(ev, 1)[0] == "untriggered"


def test_several_buy_stops_fire_nearest_first_then_arrival():
    h = Harness()
    trade_at(h, 100, 900)
    h.place(1, True, 1, 120, order_type=STOP_LIMIT, stop_price=104)
    h.place(2, True, 1, 120, order_type=STOP_LIMIT, stop_price=102)
    h.place(3, True, 1, 120, order_type=STOP_LIMIT, stop_price=102)
    h.sell(10, 105, 1, user=3)
    ev = h.buy(11, 105, 1, user=4)
    triggered = [e[4] for e in order_events(ev) if e[6] == "triggered"]
    assert triggered == [2, 3, 1]


def test_sell_stops_fire_highest_stop_first():
    h = Harness()
    trade_at(h, 100, 900)
    h.place(1, False, 1, 1, order_type=STOP_LIMIT, stop_price=95)
    h.place(2, False, 1, 1, order_type=STOP_LIMIT, stop_price=98)
    h.buy(10, 90, 1, user=4)
    ev = h.sell(11, 90, 1, user=3)
    assert [e[4] for e in order_events(ev) if e[6] == "triggered"] == [2, 1]


def test_cascade_within_one_command():
    h = Harness()
    trade_at(h, 100, 900)
    # Stop 1 (sell at <= 99) trades at 97, which triggers stop 2 (sell at <= 97).
    h.place(1, False, 1, 0, order_type=STOP_MARKET, stop_price=99)
    h.place(2, False, 1, 0, order_type=STOP_MARKET, stop_price=97)
    h.buy(20, 99, 1, user=4)
    h.buy(21, 97, 1, user=4)
    h.buy(22, 96, 1, user=4)
    ev = h.sell(30, 99, 1, user=3)
    assert fills(ev) == [(20, 30, 99, 1), (21, 1, 97, 1), (22, 2, 96, 1)]
    assert h.engine.last_price("X") == 96


def test_cancel_untriggered_stop():
    h = Harness()
    h.place(1, True, 1, 0, order_type=STOP_MARKET, stop_price=110)
    ev = h.cancel(1)
    assert final(ev, 1) == ("cancelled", "user", 0, 0)
    assert h.engine.books["X"].buy_stops == []
