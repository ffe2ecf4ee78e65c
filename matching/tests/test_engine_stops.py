"""Stop-market and stop-limit orders: trigger on last trade price, order, cascades."""

from matching.engine import IOC, STOP_LIMIT, STOP_MARKET
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


def test_sell_stop_triggers_on_a_print_at_its_price_though_the_sweep_ends_above_it():
    # A market buy prints 97 then 98: the trade at 97 reached the sell stop at 97 (a stop is
    # elected by a trade at or through its price), though the last price is 98 once it is done.
    h = Harness()
    trade_at(h, 100, 900)
    h.sell(1, 97, 1, user=3)
    h.sell(2, 98, 1, user=3)
    h.buy(3, 90, 5, user=4)
    h.place(10, False, 1, 0, user=7, order_type=STOP_MARKET, stop_price=97)
    ev = h.market_buy(11, 2, user=8)
    assert [e[6] for e in order_events(ev, 10)] == ["triggered", "filled"]
    assert fills(ev) == [(1, 11, 97, 1), (2, 11, 98, 1), (3, 10, 90, 1)]


def test_buy_stop_triggers_on_a_print_at_its_price_though_the_sweep_ends_below_it():
    h = Harness()
    trade_at(h, 100, 900)
    h.buy(1, 103, 1, user=3)
    h.buy(2, 102, 1, user=3)
    h.sell(3, 110, 5, user=4)
    h.place(10, True, 1, 0, user=7, order_type=STOP_MARKET, stop_price=103)
    ev = h.sell(11, 102, 2, user=8)  # prints 103 then 102
    assert [e[6] for e in order_events(ev, 10)] == ["triggered", "filled"]
    assert (3, 10, 110, 1) in fills(ev)


def test_prints_before_a_stop_arrived_never_trigger_it():
    h = Harness()
    trade_at(h, 100, 900)
    h.sell(1, 97, 1, user=3)
    h.sell(2, 98, 1, user=3)
    h.market_buy(3, 2, user=8)  # prints 97 then 98, with no stop waiting
    ev = h.place(10, False, 1, 0, user=7, order_type=STOP_MARKET, stop_price=97)
    ev += h.buy(11, 90, 1, user=4, tif=IOC)  # a command that trades nothing
    ev += h.place(12, False, 1, 0, user=7, order_type=STOP_MARKET, stop_price=96)
    assert [e[6] for e in order_events(ev) if e[4] in (10, 12)] == ["untriggered"] * 2
