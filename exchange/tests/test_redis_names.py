"""Redis names: pub/sub channels are one namespace per server, so they carry the database."""

import json

import redis
from django.conf import settings
from django.test import override_settings

from matching.transport import market_data_channel, private_events_channel, replies_channel


def channels() -> list[str]:
    return [market_data_channel(0), private_events_channel(), replies_channel()]


def test_deployments_on_two_databases_of_one_server_do_not_share_a_channel():
    base = settings.REDIS_URL.rsplit("/", 1)[0]
    with override_settings(REDIS_URL=f"{base}/5", REDIS_KEY_PREFIX="ex:"):
        on_five = channels()
    with override_settings(REDIS_URL=f"{base}/6", REDIS_KEY_PREFIX="ex:"):
        on_six = channels()
    with override_settings(REDIS_URL=base, REDIS_KEY_PREFIX="ex:"):
        on_zero = channels()
    assert not set(on_five) & set(on_six)
    assert on_zero == ["ex:db0:md:shard:0", "ex:db0:md:private", "ex:db0:matching:replies"]


def test_a_message_published_from_another_database_is_not_received():
    base = settings.REDIS_URL.rsplit("/", 1)[0]
    listener = redis.Redis.from_url(f"{base}/5")
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    with override_settings(REDIS_URL=f"{base}/5"):
        pubsub.subscribe(market_data_channel(0))
    with override_settings(REDIS_URL=f"{base}/6"):
        forged = market_data_channel(0)
    pubsub.get_message(timeout=1)  # the subscription's confirmation (not returned)
    redis.Redis.from_url(f"{base}/6").publish(forged, json.dumps({"books": {}}))
    received = [pubsub.get_message(timeout=0.2) for _ in range(5)]
    pubsub.close()
    assert received == [None] * 5
