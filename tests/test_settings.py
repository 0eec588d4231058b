import pytest
from django.test import override_settings

from reco_plugin import scoring
from reco_plugin.conf import DEFAULTS, reco_settings


def test_defaults_fill_what_the_shop_did_not_set():
    assert reco_settings.DEFAULT_LIMIT == DEFAULTS["DEFAULT_LIMIT"]
    assert reco_settings.TOPICS["page_views"] == "page_views"
    assert reco_settings.EVENT_WEIGHTS == scoring.EVENT_WEIGHTS


def test_shop_settings_override_defaults_and_reload_on_change(settings):
    assert reco_settings.PRODUCT_MODEL == "catalog.Product"
    with override_settings(RECO_PLUGIN={**settings.RECO_PLUGIN, "DEFAULT_LIMIT": 3}):
        assert reco_settings.DEFAULT_LIMIT == 3
    assert reco_settings.DEFAULT_LIMIT == DEFAULTS["DEFAULT_LIMIT"]


def test_unknown_setting_is_an_error():
    with pytest.raises(AttributeError, match="Invalid RECO_PLUGIN setting"):
        _ = reco_settings.NOT_A_SETTING
