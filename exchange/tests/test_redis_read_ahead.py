"""Reading an order op's Redis keys together (`redis_read_ahead`), against the real Redis."""

import uuid

from django.test import override_settings

from exchange.embedded_servers import free_port
from exchange.redis_connection import (
    change_counter_bump,
    change_counter_read,
    redis_client,
    redis_get,
    redis_key,
    redis_read_ahead,
)


def fresh_key() -> str:
    return redis_key("test", "read-ahead", uuid.uuid4().hex)


def test_inside_the_block_a_key_read_ahead_answers_as_it_was_when_the_block_began():
    counter, book, other = fresh_key(), fresh_key(), fresh_key()
    client = redis_client()
    client.set(counter, b"7")
    client.set(other, b"x")
    with redis_read_ahead([counter, book]):
        client.set(counter, b"8")  # moved after the block read it
        client.set(book, b"{}")
        client.set(other, b"y")
        assert change_counter_read(counter) == b"7"
        assert redis_get(book) is None  # read ahead as absent
        assert redis_get(other) == b"y"  # not read ahead: asked at once
    assert change_counter_read(counter) == b"8"  # the block is over: Redis again
    assert redis_get(book) == b"{}"
    client.delete(counter, book, other)


def test_a_nested_block_reads_only_the_keys_the_outer_one_did_not():
    counter, book = fresh_key(), fresh_key()
    client = redis_client()
    client.set(counter, b"1")
    with redis_read_ahead([counter]):
        client.set(counter, b"2")
        client.set(book, b"b1")
        with redis_read_ahead([counter, book]):
            client.set(book, b"b2")
            assert redis_get(counter) == b"1"  # the outer block's value, not read again
            assert redis_get(book) == b"b1"
        assert redis_get(counter) == b"1"
        assert redis_get(book) == b"b2"  # the inner block's values ended with it
    client.delete(counter, book)


def test_without_redis_nothing_is_read_ahead_and_each_reader_answers_as_redis_down():
    counter = fresh_key()
    redis_client.cache_clear()
    try:
        with (
            override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"),
            redis_read_ahead([counter]),
        ):
            assert change_counter_read(counter) is None  # "look again", as without it
    finally:
        redis_client.cache_clear()


def test_a_change_counter_never_comes_back_to_a_value_it_had_even_after_redis_lost_it():
    counter = fresh_key()
    seen = [change_counter_read(counter)]  # started at first read
    assert seen[0] == change_counter_read(counter)  # and stays until it moves
    for _ in range(3):
        change_counter_bump(counter, unsignalled="test")
        seen.append(change_counter_read(counter))
        redis_client().delete(counter)  # Redis lost it (a flush, a restart)
        seen.append(change_counter_read(counter))
    assert None not in seen and len(set(seen)) == len(seen)
    redis_client().delete(counter)
