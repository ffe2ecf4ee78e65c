"""The demo market maker (`make run`'s `demo` process) runs for days: it keeps no query log
from one step to the next."""

import pytest
from django.db import connection

from exchange.demo_market import demo_market_run
from exchange.tests.api_client import make_instrument


@pytest.mark.django_db(transaction=True)
def test_the_demo_logs_only_the_queries_of_its_current_step_under_debug(settings):
    """Under DEBUG (as `make run` sets it) Django logs every query until a request starts,
    which never happens in this loop: its log had kept every query of every step, up to
    Django's cap of 9,000 per connection."""
    settings.DEBUG = True
    settings.ORDER_REPLY_TIMEOUT_SECONDS = 0.05  # no worker here: each answer is a 202
    make_instrument()

    demo_market_run(interval=0, steps=2)

    logged = [query["sql"] for query in connection.queries_log]
    assert logged  # the last step's
    # The demo's accounts are looked up by name once, before the first step.
    assert not any("demo-taker-1" in sql for sql in logged)
