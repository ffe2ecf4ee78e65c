"""Hand-checked trades of the benchmark's baseline book."""

from bench.baseline_book import BaselineBook


def test_price_then_time_priority_at_the_resting_price() -> None:
    book = BaselineBook()
    assert book.place(1, 7, False, 101, 2, False) == []
    assert book.place(2, 7, False, 100, 2, False) == []
    assert book.place(3, 8, False, 100, 2, False) == []
    trades = book.place(4, 9, True, 102, 5, False)
    assert trades == [(2, 4, 100, 2), (3, 4, 100, 2), (1, 4, 101, 1)]
    assert (book.best_bid(), book.best_ask()) == (None, 101)


def test_gtc_remainder_rests_and_ioc_remainder_is_dropped() -> None:
    book = BaselineBook()
    book.place(1, 7, True, 99, 3, False)
    assert book.place(2, 8, False, 98, 5, False) == [(1, 2, 99, 3)]
    assert (book.best_bid(), book.best_ask()) == (None, 98)
    assert book.place(3, 9, True, 98, 4, True) == [(2, 3, 98, 2)]
    assert (book.best_bid(), book.best_ask()) == (None, None)
    assert book.place(4, 9, True, 97, 1, True) == []
    assert book.best_bid() is None


def test_sell_walks_the_bids_from_the_highest_price() -> None:
    book = BaselineBook()
    book.place(1, 7, True, 98, 1, False)
    book.place(2, 7, True, 100, 1, False)
    book.place(3, 7, True, 99, 1, False)
    assert book.place(4, 8, False, 99, 3, False) == [(2, 4, 100, 1), (3, 4, 99, 1)]
    assert (book.best_bid(), book.best_ask()) == (98, 99)


def test_cancel_removes_only_that_order() -> None:
    book = BaselineBook()
    book.place(1, 7, False, 100, 1, False)
    book.place(2, 7, False, 100, 1, False)
    assert book.cancel(1) is True
    assert book.cancel(1) is False
    assert book.place(3, 8, True, 100, 2, False) == [(2, 3, 100, 1)]
    assert book.best_bid() == 100  # the unfilled lot rests


def test_move_loses_priority_and_can_trade() -> None:
    book = BaselineBook()
    book.place(1, 7, False, 100, 2, False)
    book.place(2, 7, False, 100, 2, False)
    assert book.move(1, 101) == []
    assert book.move(1, 100) == []  # back at 100, now behind order 2
    assert book.place(3, 8, True, 100, 3, False) == [(2, 3, 100, 2), (1, 3, 100, 1)]
    book.place(4, 8, True, 99, 2, False)
    assert book.move(1, 99) == [(4, 1, 99, 1)]  # crossing move trades its open quantity
    assert book.move(42, 99) == []


def test_reduce_keeps_priority() -> None:
    book = BaselineBook()
    book.place(1, 7, True, 100, 5, False)
    book.place(2, 7, True, 100, 5, False)
    assert book.reduce(1, 2) is True
    assert book.reduce(1, 3) is False and book.reduce(1, 0) is False
    assert book.place(3, 8, False, 100, 4, False) == [(1, 3, 100, 2), (2, 3, 100, 2)]
