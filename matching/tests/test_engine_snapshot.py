"""Determinism over seeded random runs, snapshot/restore round trip, bulk-load hash equality."""

import random

import pytest

from matching.engine import (
    DAY,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    POST_ONLY,
    POST_ONLY_ADJUST,
    STOP_LIMIT,
    STOP_MARKET,
    Engine,
    Instrument,
    amend,
    cancel,
    expire_due,
    halt,
    market_buy_quote,
    mass_cancel,
    place,
    resume,
)

SYMS = ("A", "B")


def make_engine() -> Engine:
    return Engine([Instrument("A", band_ppm=0), Instrument("B", tick_size="0.5", lot_size="0.01")])


def random_commands(seed: int, n: int) -> list[tuple]:
    """A seeded mix of every command kind with prices clustered near 1000."""
    rng = random.Random(seed)
    cmds = []
    live: list[int] = []
    next_id = 1
    ts = 0
    for _ in range(n):
        ts += rng.randint(1, 5)
        r = rng.random()
        if r < 0.55 or not live:
            sym = rng.choice(SYMS)
            is_buy = rng.random() < 0.5
            kind = rng.choices([LIMIT, MARKET, STOP_MARKET, STOP_LIMIT], [80, 8, 6, 6])[0]
            tif = rng.choices([GTC, IOC, FOK, GTD, DAY], [70, 10, 6, 8, 6])[0]
            if kind in (MARKET, STOP_MARKET) and tif not in (GTC, IOC, FOK):
                tif = IOC
            flags = 0
            if kind == LIMIT and tif in (GTC, GTD, DAY) and rng.random() < 0.1:
                flags = rng.choice([POST_ONLY, POST_ONLY_ADJUST])
            qty = rng.randint(1, 20)
            display = (
                rng.randint(1, 5)
                if kind == LIMIT and tif != IOC and tif != FOK and (rng.random() < 0.15)
                else 0
            )
            price = 1000 + rng.randint(-15, 15)
            oid = next_id
            next_id += 1
            if kind == MARKET and is_buy and rng.random() < 0.2:
                cmds.append(
                    market_buy_quote(
                        ts=ts, symbol=sym, order_id=oid, user_id=rng.randint(1, 6),
                        quote_amount=rng.randint(500, 50_000),
                    )
                )  # fmt: skip
                continue
            cmds.append(
                place(
                    ts=ts, symbol=sym, order_id=oid, user_id=rng.randint(1, 6), is_buy=is_buy,
                    qty=qty, price=price, order_type=kind, tif=tif,
                    expire_at=ts + rng.randint(1, 200) if tif in (GTD, DAY) else 0,
                    flags=flags, display_qty=display,
                    stop_price=1000 + rng.randint(-10, 10) if kind >= STOP_MARKET else 0,
                    max_quote=rng.choice([10**9, rng.randint(1000, 30_000)]) if is_buy else 0,
                    maker_fee_ppm=rng.choice([0, -100, 200]),
                    taker_fee_ppm=rng.choice([0, 500, 1000]), stp=rng.randint(0, 6),
                )
            )  # fmt: skip
            live.append(oid)
        elif r < 0.65:
            cmds.append(cancel(ts=ts, order_id=rng.choice(live)))
        elif r < 0.90:
            oid = rng.choice(live)
            cmds.append(
                amend(
                    ts=ts, order_id=oid,
                    price=1000 + rng.randint(-15, 15) if rng.random() < 0.7 else None,
                    qty=rng.randint(1, 25) if rng.random() < 0.5 else None,
                )
            )  # fmt: skip
        elif r < 0.95:
            cmds.append(expire_due(now=ts))
        elif r < 0.97:
            cmds.append(mass_cancel(ts=ts, user_id=rng.randint(1, 6), symbol=rng.choice(SYMS)))
        elif r < 0.985:
            cmds.append(halt(ts=ts, symbol=rng.choice(SYMS)))
        else:
            cmds.append(resume(ts=ts, symbol=rng.choice(SYMS)))
        if len(live) > 400:
            live = live[-200:]
    return cmds


def check_invariants(eng: Engine) -> None:
    """Book structure is consistent: levels, links, keys, order dict."""
    seen = set()
    for book in eng.books.values():
        assert book.index_ok()
        if book.bids and book.asks:
            assert max(book.bids) < min(book.asks), "crossed book"
        for levels in (book.bids, book.asks):
            for p, lvl in levels.items():
                o, prev, qty, count = lvl.head, None, 0, 0
                while o is not None:
                    assert o.prev is prev and o.level is lvl and o.price == p
                    assert o.qty > 0 and eng.orders[o.id] is o
                    qty += o.qty
                    count += 1
                    seen.add(o.id)
                    prev, o = o, o.next
                assert lvl.tail is prev and (qty, count) == (lvl.qty, lvl.count) and count > 0
        for stops in (book.buy_stops, book.sell_stops):
            for e in stops:
                seen.add(e[2].id)
    assert seen == set(eng.orders)
    for o in eng.orders.values():
        if o.is_buy:
            assert 0 <= o.spent <= o.max_quote


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_commands_give_same_events_and_hash(seed):
    cmds = random_commands(seed, 3000)
    a, b = make_engine(), make_engine()
    ev_a = a.apply_batch(cmds)
    ev_b = b.apply_batch(cmds)
    assert ev_a == ev_b
    assert a.state_hash() == b.state_hash()
    assert any(e[0] == 2 for e in ev_a), "the run should trade"
    check_invariants(a)


@pytest.mark.parametrize("seed", [4, 5])
def test_invariants_hold_after_every_command(seed):
    eng = make_engine()
    for cmd in random_commands(seed, 1500):
        eng.apply(cmd)
        check_invariants(eng)


@pytest.mark.parametrize("seed", [6, 7])
def test_snapshot_restore_continues_identically(seed):
    cmds = random_commands(seed, 4000)
    ref = make_engine()
    ref_events = ref.apply_batch(cmds)
    eng = make_engine()
    first = eng.apply_batch(cmds[:2000])
    restored = Engine.restore(eng.snapshot())
    assert restored.state_hash() == eng.state_hash()
    rest = restored.apply_batch(cmds[2000:])
    assert first + rest == ref_events
    assert restored.state_hash() == ref.state_hash()


def test_bulk_load_rebuilds_identical_hash_from_exported_records():
    eng = make_engine()
    eng.apply_batch(random_commands(8, 3000))
    state = eng.export_state()
    assert state["orders"] and len(state["orders"]) == len(eng.resting_orders())
    rebuilt = Engine.bulk_load(state)
    assert rebuilt.state_hash() == eng.state_hash()
    check_invariants(rebuilt)
    more = random_commands(9, 1000)
    assert rebuilt.apply_batch(more) == eng.apply_batch(more)


def test_state_hash_changes_when_state_changes():
    eng = make_engine()
    h0 = eng.state_hash()
    eng.apply(place(ts=1, symbol="A", order_id=1, user_id=1, is_buy=False, qty=1, price=5))
    assert eng.state_hash() != h0
