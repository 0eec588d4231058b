"""The catalog sync keeps the sets the pipeline's rules read."""

import base64
import json

import pytest
import redis

from reco_plugin import catalog, keys
from reco_plugin.conf import reco_settings

pytestmark = pytest.mark.django_db


def test_the_catalog_sync_keeps_the_unavailable_and_repeatable_sets(r, make_product, settings):
    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "PRODUCT_FIELDS": {
            "title": "name",
            "category": "category",
            "in_stock": "in_stock",
            "repeatable": "is_repeatable",
        },
    }
    from demo_shop.catalog.models import Product

    Product.is_repeatable = property(lambda self: self.pk == 3)
    try:
        make_product(1)
        make_product(2, in_stock=False)
        make_product(3)
        catalog.sync_catalog()
        assert r.smembers(keys.catalog_unavailable()) == {"2"}
        assert r.smembers(keys.catalog_repeatable()) == {"3"}
        Product.objects.filter(pk=2).update(in_stock=True)
        Product.objects.filter(pk=1).delete()
        catalog.sync_catalog()
        # back in stock; a deleted product leaves the catalog (never served) and the sets
        assert r.smembers(keys.catalog_unavailable()) == set()
        assert not r.exists(keys.catalog_product("1"))
        assert not r.sismember(keys.catalog_index(), "1")
    finally:
        del Product.is_repeatable


def test_reco_sync_catalog_copies_the_catalog_once_and_says_what_it_did(r, make_product):
    from io import StringIO

    from django.core.management import call_command

    make_product(7, name="Heat", category="Crime")
    make_product(8, in_stock=False)
    r.sadd(keys.catalog_index(), "99")  # a product the shop deleted
    out = StringIO()
    call_command("reco_sync_catalog", stdout=out)
    assert (
        out.getvalue().strip()
        == "synced 2 products, removed 1, 1 unavailable (out of stock or blocked)"
    )
    assert r.hget(keys.catalog_product("7"), "title") == "Heat"
    assert r.hget(keys.catalog_product("7"), "category") == "Crime"
    assert r.smembers(keys.catalog_index()) == {"7", "8"}


def test_reco_sync_catalog_with_redis_down_fails_with_the_address(make_product, settings):
    from django.core.management import CommandError, call_command

    from stack.services import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "REDIS_URL": url}
    make_product(1)
    with pytest.raises(CommandError, match=f"Redis at {url} failed"):
        call_command("reco_sync_catalog")


@pytest.mark.django_db(transaction=True)
def test_a_product_save_without_a_celery_broker_syncs_at_once(r, make_product):
    import time

    from reco_plugin.compat import celery, celery_configured

    assert celery is not None and not celery_configured()  # installed, no broker configured
    started = time.monotonic()
    product = make_product(9105, name="Before")
    product.name = "After"
    product.save()
    assert time.monotonic() - started < 0.5  # no attempt at a broker
    assert r.hget(keys.catalog_product("9105"), "title") == "After"


@pytest.mark.django_db(transaction=True)
def test_a_product_save_with_the_celery_broker_down_syncs_at_once(
    r, redis_url, make_product, caplog
):
    import time

    from reco_plugin.compat import celery, celery_configured
    from stack.services import free_port

    app = celery.current_app
    app.conf.broker_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    try:
        assert celery_configured()
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="reco_plugin.receivers"):
            product = make_product(9106, name="Before")
            product.name = "After"
            product.save()
        assert time.monotonic() - started < 3
        assert r.hget(keys.catalog_product("9106"), "title") == "After"
        assert any("broker is unavailable" in m for m in caplog.messages)
        # with the broker up, the save queues the task instead
        broker = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/9")
        broker.flushdb()
        app.conf.broker_url = redis_url.rsplit("/", 1)[0] + "/9"
        app.pool.force_close_all()
        app._pool = None  # a pool for the new broker
        product.name = "Queued"
        product.save()
        (message,) = [json.loads(m) for m in broker.lrange("celery", 0, -1)]
        assert message["headers"]["task"] == "reco_plugin.sync_products"
        # the task says which shop sent it (tasks.refuse_another_shops)
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert args == [["9106"]] and kwargs == {"shop": reco_settings.KEY_PREFIX}
        assert r.hget(keys.catalog_product("9106"), "title") == "After"  # for the worker to do
    finally:
        app.conf.broker_url = None
        app.pool.force_close_all()
        app._pool = None


def test_served_display_fields_follow_every_catalog_sync(client, r, make_product):
    make_product(31, name="Old title")
    make_product(32)
    catalog.sync_catalog()
    from tests.conftest import put_list

    put_list(r, keys.trending(), [31, 32])
    first = client.get("/reco/api/trending/").json()["items"]
    assert first[0]["title"] == "Old title"
    # read once per catalog version: a hash changed behind the sync's back is not seen...
    r.hset(keys.catalog_product("31"), "title", "Written by hand")
    assert client.get("/reco/api/trending/").json()["items"][0]["title"] == "Old title"
    # ...and any sync (a product saved, the periodic one) is
    from demo_shop.catalog.models import Product

    Product.objects.filter(pk=32).update(name="Renamed")
    catalog.sync_products(["32"])
    titles = [i["title"] for i in client.get("/reco/api/trending/").json()["items"]]
    assert titles == ["Written by hand", "Renamed"]


def test_a_worker_refuses_the_tasks_of_another_shop_on_its_broker(r, make_product, caplog):
    """Two shops on one broker database: each worker takes the other's tasks.
    One sent by another shop (its KEY_PREFIX) is not run here, said in the log,
    and put back on the queue for that shop's workers, a few times."""
    from reco_plugin import tasks

    make_product(9107, name="Ours")
    with caplog.at_level("ERROR", logger="reco_plugin.tasks"):
        result = tasks.sync_products.apply((["9107"],), {"shop": "othershop"})
        forgotten = tasks.forget.apply(("s:visitor",), {"shop": "othershop"})
    assert result.failed() and forgotten.failed()  # after its retries, eagerly here
    assert r.hget(keys.catalog_product("9107"), "title") is None
    refusals = [m for m in caplog.messages if "'othershop' reached this worker" in m]
    assert len(refusals) == 2 * (tasks.ANOTHER_SHOPS_RETRIES + 1)
    assert "share a Celery broker database" in refusals[0]
    # its own shop's task, and one from a sender that does not say, run
    assert tasks.sync_products.apply((["9107"],), {"shop": reco_settings.KEY_PREFIX}).successful()
    assert r.hget(keys.catalog_product("9107"), "title") == "Ours"
    assert tasks.sync_products.apply((["9107"],)).successful()
