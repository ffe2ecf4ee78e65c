"""Which shard holds an instrument's book: chosen once, at listing."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from exchange.models import Instrument
from matching.sharding import shard_for_symbol
from matching.tests.order_rows import instrument_create


@pytest.mark.django_db
def test_an_instrument_keeps_its_shard_when_saved_under_another_shard_count(settings):
    """Every save recomputed it: an admin edit made by a process with another MATCHING_SHARDS
    sent the symbol to a shard that did not hold its book, where its orders and cancels waited
    for good (helper 49)."""
    symbol = next(
        s
        for s in (f"SH{n}" for n in range(100))
        if shard_for_symbol(s, 2) != shard_for_symbol(s, 3)
    )
    settings.MATCHING_SHARDS = 2
    instrument = instrument_create(symbol=symbol, listed=False)
    listed_on = instrument.shard
    assert listed_on == shard_for_symbol(symbol, 2)
    settings.MATCHING_SHARDS = 3
    instrument.min_quantity = 2
    instrument.save()
    assert Instrument.objects.get(pk=instrument.pk).shard == listed_on


@pytest.mark.django_db
def test_matching_verify_refuses_a_shard_that_does_not_exist(settings):
    """It said "no state yet, nothing to verify" and exited 0: a mistyped shard read as a
    passed check."""
    settings.MATCHING_SHARDS = 2
    with pytest.raises(CommandError, match="shard 7 does not exist"):
        call_command("matching_verify", "--shard", "7")


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_worker_names_the_instruments_of_shards_beyond_matching_shards_at_start(
    processes, process_env
):
    """MATCHING_SHARDS lowered below a shard that holds instruments (README: never do it)
    started every worker without a word: those books' orders and cancels were accepted and
    never applied, and /healthz said so only once one was queued."""
    from conftest import wait_until

    stranded = instrument_create(listed=False)
    Instrument.objects.filter(pk=stranded.pk).update(shard=1)  # listed while two shards ran
    served = instrument_create(listed=False)
    worker = processes.manage("run_matching", "--shard", "0", env=process_env, name="worker")
    wait_until(lambda: "shard worker serving" in worker.log_path.read_text(), timeout=30)
    lines = [
        line
        for line in worker.log_path.read_text().splitlines()
        if "instruments on shards no worker serves" in line
    ]
    assert len(lines) == 1, worker.log_path.read_text()[-2000:]
    assert '"level":"error"' in lines[0]
    assert f"{stranded.symbol} (shard 1)" in lines[0]
    assert served.symbol not in lines[0]
