"""Reads of the matching side for the scheduled work (no writes here: see matching.services)."""

import datetime as dt

from django.db import connection

# Which shards hold an open GTD/DAY order due by %s: per instrument, one probe of the partial
# index `order_open_expiring` (instrument, expire_at) that stops at the first due order, so the
# cost follows the number of instruments, not of orders (nor of orders already due). `is_open`
# is every status the engine keeps (new, partially_filled, untriggered stops) plus the
# transient pending_new and triggered; a GTC/IOC/FOK order's expire_at means nothing to the
# engine (recovery and the codec drop it).
SHARDS_WITH_ORDERS_DUE_SQL = """
SELECT DISTINCT i.shard
  FROM exchange_instrument i
 CROSS JOIN LATERAL (
       SELECT 1
         FROM exchange_order o
        WHERE o.instrument_id = i.id
          AND o.is_open
          AND o.time_in_force IN ('GTD', 'DAY')
          AND o.expire_at <= %s
        LIMIT 1) AS due
"""


def shards_with_orders_due(*, now: dt.datetime) -> set[int]:
    """The shards holding an open GTD/DAY order (resting or an untriggered stop) whose
    expire_at is at or before `now`: those an `expire_due(now)` would change."""
    with connection.cursor() as cursor:
        cursor.execute(SHARDS_WITH_ORDERS_DUE_SQL, [now])
        return {shard for (shard,) in cursor.fetchall()}
