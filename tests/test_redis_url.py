"""One Redis URL for every part, Sentinel included (reco_plugin.redis_url)."""

from __future__ import annotations

import pytest
import redis
import redis.sentinel

from reco_plugin import redis_url

SENTINELS = "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380,10.0.0.3/reco/3"


def test_a_sentinel_url_names_its_sentinels_service_database_and_password():
    address = redis_url.parse_sentinel(SENTINELS + "?sentinel_password=watch")
    assert address.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379))
    assert (address.service, address.db, address.password) == ("reco", 3, "s3cret")
    assert address.sentinel_password == "watch" and not address.ssl
    assert redis_url.parse_sentinel("rediss+sentinel://h:1/reco").ssl
    # any of redis-py's connection options, typed as redis-py types them
    tls = redis_url.parse_sentinel(
        "redis+sentinel://h:1/reco?ssl_ca_certs=/ca.pem&max_connections=50"
    )
    assert dict(tls.options) == {"ssl_ca_certs": "/ca.pem", "max_connections": 50}


@pytest.mark.parametrize(
    "url, says",
    [
        ("redis+sentinel:///reco/0", "at least one Sentinel"),
        ("redis+sentinel://h:1", "/SERVICE"),
        ("redis+sentinel://h:1/reco/0/extra", "/SERVICE"),
        ("redis+sentinel://h:1/reco/zero", "not a number"),
        ("redis+sentinel://h:port/reco", "HOST:PORT"),
        ("redis+sentinel://h:1/reco?max_connections=many", "max_connections"),
    ],
)
def test_a_wrong_sentinel_url_says_what_is_wrong(url, says):
    with pytest.raises(redis_url.RedisURLError, match=says):
        redis_url.parse_sentinel(url)


def test_another_database_of_the_same_server_or_primary():
    assert redis_url.with_db("redis://:pw@h:6379/0", 2) == "redis://:pw@h:6379/2"
    assert redis_url.with_db("redis://h:6379", 1) == "redis://h:6379/1"
    assert redis_url.with_db(SENTINELS, 1).endswith("10.0.0.3/reco/1")
    assert redis_url.with_db("redis+sentinel://h:1/reco", 2) == "redis+sentinel://h:1/reco/2"


def test_a_sentinel_client_asks_for_the_primary_with_the_options_given():
    client = redis_url.connect(SENTINELS, socket_timeout=0.5, decode_responses=True)
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "reco"
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "s3cret"
    assert pool.connection_kwargs["socket_timeout"] == 0.5
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert (sentinel["host"], sentinel["port"], sentinel["socket_timeout"]) == (
        "10.0.0.1",
        26379,
        0.5,
    )
    plain = redis_url.connect("redis://127.0.0.1:1/4")
    assert plain.connection_pool.connection_kwargs["db"] == 4


def test_the_channel_layer_and_celery_are_given_the_sentinels():
    host = redis_url.channel_layer_host(redis_url.with_db(SENTINELS, 2), socket_timeout=30)
    assert host["sentinels"] == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert (host["master_name"], host["db"], host["socket_timeout"]) == ("reco", 2, 30)
    assert redis_url.channel_layer_host("redis://h:1/2", socket_timeout=30) == {
        "address": "redis://h:1/2",
        "socket_timeout": 30,
    }
    broker, options = redis_url.celery_broker(redis_url.with_db(SENTINELS, 1))
    assert broker == (
        "sentinel://:s3cret@10.0.0.1:26379/1;sentinel://:s3cret@10.0.0.2:26380/1;"
        "sentinel://:s3cret@10.0.0.3:26379/1"
    )
    assert options == {"master_name": "reco"}
    assert redis_url.celery_broker("redis://h:1/1") == ("redis://h:1/1", {})


def test_roles_of_sentinels_that_do_not_answer_say_so():
    found = redis_url.roles("redis+sentinel://127.0.0.1:1,127.0.0.1:2/reco/0", timeout=0.2)
    assert [s["up"] for s in found["sentinels"]] == [False, False]
    assert "primary" not in found
    assert redis_url.roles("redis://127.0.0.1:1/0") == {}
