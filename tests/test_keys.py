from channels.layers import BaseChannelLayer

from reco_plugin import keys


def test_every_key_is_namespaced():
    built = [
        keys.visitor_recommendations("s:1"),
        keys.visitor_recent("s:1"),
        keys.product_similar("9"),
        keys.product_covisits("9"),
        keys.popularity(),
        keys.trending_window_bucket("short", 300),
        keys.trending_window_bucket("long", 3600, "Drama"),
        keys.trending_list("long", "Drama"),
        keys.visitor_seen("s:1"),
        keys.product_fbt("9"),
        keys.product_retrained("9"),
        keys.bandit(),
        keys.bandit_policy(),
        keys.catalog_unavailable(),
        keys.trending(),
        keys.catalog_product("9"),
        keys.catalog_index(),
        keys.pipeline_offsets(),
        keys.pipeline_heartbeat(),
        keys.updates_channel(),
        keys.warmup_done(),
    ]
    assert all(key.startswith("reco:v1:") for key in built)
    assert len(set(built)) == len(built)


def test_keys_of_different_visitors_and_products_differ():
    assert keys.visitor_recommendations("s:1") != keys.visitor_recommendations("s:2")
    assert keys.product_similar("1") != keys.product_similar("11")


def test_visitor_group_is_a_valid_channels_group_and_hides_the_id():
    group = keys.visitor_group("s:abc:def/ü")
    assert BaseChannelLayer(None).require_valid_group_name(group)
    assert "abc" not in group
    assert keys.visitor_group("u:1") != keys.visitor_group("u:2")
    assert keys.visitor_group("u:1") == keys.visitor_group("u:1")


def test_shops_on_two_databases_of_one_redis_have_two_update_channels():
    import redis

    assert keys.updates_channel() == keys.updates_channel(0) == "reco:v1:updates"
    assert keys.updates_channel(3) == "reco:v1:db3:updates"
    assert keys.db_of(redis.Redis.from_url("redis://127.0.0.1:1/3")) == 3
    assert keys.db_of(redis.Redis.from_url("redis://127.0.0.1:1")) == 0
