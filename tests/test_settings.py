import pytest
from django.test import override_settings

from reco_plugin.conf import DEFAULTS, reco_settings


def test_defaults_fill_what_the_shop_did_not_set():
    assert reco_settings.DEFAULT_LIMIT == DEFAULTS["DEFAULT_LIMIT"]
    assert reco_settings.TOPICS["page_views"] == "page_views"
    assert reco_settings.PIPELINE == {}


def test_shop_settings_override_defaults_and_reload_on_change(settings):
    assert reco_settings.PRODUCT_MODEL == "catalog.Product"
    with override_settings(RECO_PLUGIN={**settings.RECO_PLUGIN, "DEFAULT_LIMIT": 3}):
        assert reco_settings.DEFAULT_LIMIT == 3
    assert reco_settings.DEFAULT_LIMIT == DEFAULTS["DEFAULT_LIMIT"]


def test_unknown_setting_is_an_error():
    with pytest.raises(AttributeError, match="Invalid RECO_PLUGIN setting"):
        _ = reco_settings.NOT_A_SETTING


EVENT_SETTINGS = (
    "KAFKA",
    "EVENT_BACKEND",
    "TOPICS",
    "TOPIC_PARTITIONS",
    "TOPIC_REPLICATION",
    "TOPIC_MIN_INSYNC_REPLICAS",
    "PRODUCT_VIEW_NAMES",
    "PRODUCT_URL_KWARG",
    "CART_MODEL",
    "ORDER_LINE_MODEL",
    "MAX_BEACON_EVENTS",
    "MAX_BEACON_BYTES",
    "BEACON_RATE",
    "BEACON_RATE_PER_ADDRESS",
    "BOT_USER_AGENTS",
    "OPT_OUT",
    "EXIT_FLUSH_SECONDS",
    "PRODUCER_STATS_SECONDS",
)


def test_the_readme_lists_every_event_setting_with_its_true_default():
    import ast
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    readme = readme.split("### Event settings", 1)[1].split("\n#", 1)[0]
    documented = {}
    for names, defaults in re.findall(
        r"^\| (`[A-Z_]+`(?: / `[A-Z_]+`)*) \| (.+?) \| .* \|$", readme, re.M
    ):
        values = [ast.literal_eval(v.strip().strip("`")) for v in defaults.split("` / `")]
        for name, value in zip(re.findall(r"`([A-Z_]+)`", names), values, strict=True):
            documented[name] = value
    for name in EVENT_SETTINGS:
        assert name in documented, f"{name} is not in the README's settings table"
        assert documented[name] == DEFAULTS[name], name
