"""The catalog sync keeps the sets the pipeline's rules read."""

import pytest

from reco_plugin import catalog, keys

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
