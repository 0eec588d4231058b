import pytest
from django.core.checks import run_checks
from django.test import override_settings


def reco_ids():
    return {m.id for m in run_checks() if m.id and m.id.startswith("reco_plugin.")}


def test_a_correct_install_has_no_reco_messages():
    assert reco_ids() == set()


def test_missing_middleware_is_E001(settings):
    middleware = [m for m in settings.MIDDLEWARE if "reco_plugin" not in m]
    with override_settings(MIDDLEWARE=middleware):
        assert "reco_plugin.E001" in reco_ids()


def test_middleware_before_sessions_is_E003(settings):
    middleware = ["reco_plugin.middleware.RecoEventMiddleware"] + [
        m for m in settings.MIDDLEWARE if "reco_plugin" not in m
    ]
    with override_settings(MIDDLEWARE=middleware):
        assert "reco_plugin.E003" in reco_ids()


def test_unknown_product_model_is_E002(settings):
    with override_settings(RECO_PLUGIN={**settings.RECO_PLUGIN, "PRODUCT_MODEL": "shop.Nope"}):
        assert "reco_plugin.E002" in reco_ids()


def test_incomplete_topics_is_E004(settings):
    with override_settings(RECO_PLUGIN={**settings.RECO_PLUGIN, "TOPICS": {"page_views": "pv"}}):
        assert "reco_plugin.E004" in reco_ids()


def test_invalid_pipeline_settings_are_E005(settings):
    for pipeline in ({"half_lfe": 3600}, {"event_weights": {"view": 2}}, {"horizon": -1}):
        with override_settings(RECO_PLUGIN={**settings.RECO_PLUGIN, "PIPELINE": pipeline}):
            assert "reco_plugin.E005" in reco_ids()
    partial = {"half_life": 24 * 3600, "event_weights": {"purchase": 8}}
    with override_settings(RECO_PLUGIN={**settings.RECO_PLUGIN, "PIPELINE": partial}):
        assert reco_ids() == set()


def test_missing_channel_layer_is_W001():
    with override_settings(CHANNEL_LAYERS={}):
        assert "reco_plugin.W001" in reco_ids()


def test_schema_class_not_spectacular_is_W002():
    with override_settings(REST_FRAMEWORK={}):
        assert "reco_plugin.W002" in reco_ids()


def with_reco(settings, **changes):
    return override_settings(RECO_PLUGIN={**settings.RECO_PLUGIN, **changes})


def test_an_event_backend_that_cannot_be_built_is_E006(settings):
    kafka = {"BACKEND": "reco_plugin.backends.kafka.KafkaBackend", "OPTIONS": {}}
    for backend, options in (
        ({"BACKEND": "reco_plugin.backends.nope.Backend"}, {}),
        (kafka, {"KAFKA": {"bootstrap.servers": "127.0.0.1:1", "no.such.option": 1}}),
    ):
        with with_reco(settings, EVENT_BACKEND=backend, **options):
            assert "reco_plugin.E006" in reco_ids()


def test_an_unbuildable_backend_is_reported_once_and_events_are_counted_dropped(settings, caplog):
    from reco_plugin import events
    from reco_plugin.backends import get_backend

    with with_reco(settings, EVENT_BACKEND={"BACKEND": "reco_plugin.backends.nope.Backend"}):
        for _ in range(5):
            assert events.emit("page_view", "s:a", "1") is not None  # the page never fails
        assert get_backend().stats() == {"dropped": 5}
    assert len([r for r in caplog.records if "cannot be built" in r.getMessage()]) == 1


def test_bad_cart_or_order_model_settings_are_E007(settings):
    good = settings.RECO_PLUGIN["ORDER_LINE_MODEL"]
    for config in (
        {"MODEL": "catalog.Nope", "PRODUCT": "product_id"},
        {"MODEL": "catalog.OrderLine"},
        {**good, "QUANTITY": "qty"},
        {**good, "USER": "buyer.user"},
        {**good, "EXTRA": "x"},
        "catalog.OrderLine",
    ):
        with with_reco(settings, ORDER_LINE_MODEL=config):
            assert "reco_plugin.E007" in reco_ids(), config


def test_bad_tracking_settings_are_E008(settings):
    for changes in (
        {"BOT_USER_AGENTS": ["(unclosed"]},
        {"OPT_OUT": "nowhere.to_be.found"},
        {"BEACON_RATE": "lots"},
    ):
        with with_reco(settings, **changes):
            assert "reco_plugin.E008" in reco_ids(), changes


def test_an_unknown_request_field_for_events_is_E013(settings):
    for value in (["ip", "cookies"], "ip"):
        with with_reco(settings, EVENT_REQUEST_FIELDS=value):
            assert "reco_plugin.E013" in reco_ids(), value
    with with_reco(settings, EVENT_REQUEST_FIELDS=["ip", "user_agent", "email"]):
        assert "reco_plugin.E013" not in reco_ids()


def test_reco_retrain_without_an_event_lake_says_what_to_set(settings):
    from django.core.management import CommandError, call_command

    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "PIPELINE": {}}
    with pytest.raises(CommandError, match="lake_path"):
        call_command("reco_retrain")


def messages_with(id_):
    return [m for m in run_checks() if m.id == id_]


def test_unknown_and_moved_setting_keys_are_E009(settings):
    with with_reco(settings, DEFAULT_LIMT=4, EVENT_WEIGHTS={"purchase": 8}, SPARK={"MASTR": "x"}):
        found = {m.msg: m.hint for m in messages_with("reco_plugin.E009")}
    assert found["RECO_PLUGIN['DEFAULT_LIMT'] is not a setting."] == "Did you mean 'DEFAULT_LIMIT'?"
    assert (
        'RECO_PLUGIN["PIPELINE"]["event_weights"]'
        in found["RECO_PLUGIN['EVENT_WEIGHTS'] is not a setting."]
    )
    assert "RECO_PLUGIN['SPARK']['MASTR'] is not a setting." in found
    assert len(found) == 3


def test_product_fields_naming_missing_attributes_are_E010(settings):
    fields = {"title": "titel", "url": "get_absolute_url", "price": "display_price"}
    with with_reco(settings, PRODUCT_FIELDS=fields):
        found = [m.msg for m in messages_with("reco_plugin.E010")]
    assert found == [
        "RECO_PLUGIN['PRODUCT_FIELDS']['title'] = 'titel': Product has no such field, "
        "property or method."
    ]
    with with_reco(settings, PRODUCT_FIELDS={"url": "get_absolute_url"}):
        assert len(messages_with("reco_plugin.E010")) == 1  # no title at all


def test_a_websocket_app_without_an_origin_check_is_W005(settings, tmp_path, monkeypatch):
    module = tmp_path / "bare_asgi.py"
    module.write_text(
        "from channels.auth import AuthMiddlewareStack\n"
        "from channels.routing import ProtocolTypeRouter, URLRouter\n"
        "import reco_plugin.routing\n"
        "application = ProtocolTypeRouter({'websocket': AuthMiddlewareStack(\n"
        "    URLRouter(reco_plugin.routing.websocket_urlpatterns))})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with override_settings(ASGI_APPLICATION="bare_asgi.application"):
        assert "reco_plugin.W005" in reco_ids()
    with override_settings(ASGI_APPLICATION=None):
        assert "reco_plugin.W003" in reco_ids()


def test_a_small_redis_channel_layer_is_W006():
    small = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:6379/2"}]},
        }
    }
    with override_settings(CHANNEL_LAYERS=small):
        found = [m.msg for m in run_checks() if m.id == "reco_plugin.W006"]
    assert len(found) == 1 and "100 connections" in found[0]
    sized = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": "redis://127.0.0.1:6379/2", "max_connections": 1000}],
            },
        }
    }
    with override_settings(CHANNEL_LAYERS=sized):
        assert "reco_plugin.W006" not in reco_ids()


def test_settings_that_need_a_missing_extra_are_reported(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("channels_redis", "celery") else real(name, *a),
    )
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {}}}
    with override_settings(CHANNEL_LAYERS=layers, CELERY_BROKER_URL="redis://127.0.0.1:6379/1"):
        found = reco_ids()
    assert {"reco_plugin.E012", "reco_plugin.W007"} <= found


def test_check_deploy_warns_of_a_redis_that_evicts_the_pipelines_keys(redis_url, r):
    """W008 on a real Redis: with maxmemory set, any policy but noeviction."""

    def deploy_ids():
        return {m.id for m in run_checks(include_deployment_checks=True) if m.id}

    assert "reco_plugin.W008" not in deploy_ids()
    before = r.config_get("maxmemory*")
    try:
        r.config_set("maxmemory", 512 * 1024 * 1024)
        r.config_set("maxmemory-policy", "allkeys-lru")
        warnings = [
            m for m in run_checks(include_deployment_checks=True) if m.id == "reco_plugin.W008"
        ]
        assert len(warnings) == 1 and "allkeys-lru" in warnings[0].msg
        r.config_set("maxmemory-policy", "noeviction")
        assert "reco_plugin.W008" not in deploy_ids()
    finally:
        r.config_set("maxmemory", before["maxmemory"])
        r.config_set("maxmemory-policy", before["maxmemory-policy"])


def test_a_production_configuration_is_warned_of_what_one_failure_would_lose(
    redis_url, r, settings
):
    """DEBUG=False: W009 for a Redis that keeps nothing on disk (the test's
    Redis runs so), W010 for topics of one copy; DEBUG=True: only --deploy says it."""
    from reco_plugin import checks

    checks._single_copy_found.clear()
    before = r.config_get("appendonly")["appendonly"]
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "TOPIC_REPLICATION": 1}
    try:
        found = {m.id: m.msg for m in run_checks() if m.id}
        assert "keeps nothing on disk" in found["reco_plugin.W009"]
        # Kafka does not answer here: the setting says one copy
        assert "one copy" in found["reco_plugin.W010"]
        r.config_set("appendonly", "yes")
        assert "reco_plugin.W009" not in reco_ids()
        r.config_set("appendonly", "no")
        settings.DEBUG = True
        assert not {"reco_plugin.W009", "reco_plugin.W010"} & reco_ids()
        deploy = {m.id for m in run_checks(include_deployment_checks=True) if m.id}
        assert {"reco_plugin.W009", "reco_plugin.W010"} <= deploy
    finally:
        r.config_set("appendonly", before)
        checks._single_copy_found.clear()


def test_the_tag_outside_any_block_of_a_child_template_is_W012(settings, tmp_path):
    from django.template.loader import render_to_string

    pages = {
        "base.html": "<main>{% block content %}{% endblock %}</main>",
        # pasted at the end, after the blocks: Django renders only the parent's blocks
        "shop/pasted.html": '{% extends "base.html" %}{% load reco %}\n'
        "{% block content %}the product{% endblock %}\n"
        '{% recommendations title="Lost" %}\n',
        "shop/in_an_if.html": '{% extends "base.html" %}{% load reco %}\n'
        "{% block content %}the product{% endblock %}\n"
        "{% if product %}\n{% recommendations product=product %}{% endif %}\n",
        "shop/in_a_block.html": '{% extends "base.html" %}{% load reco %}\n'
        "{% block content %}{% if 1 %}{% recommendations %}{% endif %}{% endblock %}\n",
        "shop/not_a_child.html": "{% load reco %}{% recommendations %}",
        "shop/broken.html": '{% extends "base.html" %}{% load nope %}{% recommendations %}',
    }
    for name, text in pages.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    templates = [{**settings.TEMPLATES[0], "DIRS": [str(tmp_path)]}]
    with override_settings(TEMPLATES=templates):
        assert "reco-widget" not in render_to_string("shop/pasted.html")  # what W012 is for
        found = sorted(m.msg for m in messages_with("reco_plugin.W012"))
    assert found == [
        f"{tmp_path / 'shop/in_an_if.html'}, line 4: {{% recommendations %}} is outside any "
        '{% block %} of a template that extends "base.html": it renders nothing.',
        f"{tmp_path / 'shop/pasted.html'}, line 3: {{% recommendations %}} is outside any "
        '{% block %} of a template that extends "base.html": it renders nothing.',
    ]


def test_a_celery_broker_in_the_plugins_own_redis_database_is_W011(settings):
    reco = {**settings.RECO_PLUGIN, "REDIS_URL": "redis://localhost:6379/0"}
    for broker, shared in (
        ("redis://127.0.0.1:6379/0", True),
        ("redis://127.0.0.1:6379", True),  # database 0 too
        ("redis://127.0.0.1:6379/1", False),
        ("redis://cache:6379/0", False),
        ("amqp://guest@127.0.0.1//", False),
    ):
        with override_settings(RECO_PLUGIN=reco, CELERY_BROKER_URL=broker):
            assert ("reco_plugin.W011" in reco_ids()) is shared, broker
    with override_settings(
        RECO_PLUGIN=reco,
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        CELERY_TASK_DEFAULT_QUEUE="myshop",  # the shop's own queue
    ):
        assert "reco_plugin.W011" not in reco_ids()
    # Sentinels: the plugin's form and kombu's name the same database
    sentinel = {**reco, "REDIS_URL": "redis+sentinel://s1:26379,s2:26379/reco/0"}
    with override_settings(
        RECO_PLUGIN=sentinel, CELERY_BROKER_URL="sentinel://s2:26379/0;sentinel://s3:26379/0"
    ):
        assert "reco_plugin.W011" in reco_ids()
    with override_settings(RECO_PLUGIN=sentinel, CELERY_BROKER_URL="sentinel://s1:26379/1"):
        assert "reco_plugin.W011" not in reco_ids()


def test_a_kafka_connector_directory_without_the_connector_is_E014(settings, tmp_path):
    from reco_plugin.connector import installed_pyspark_version

    def connector_errors(directory):
        spark = {"CHECKPOINT": "/tmp/c", "KAFKA_CONNECTOR": str(directory)}
        with with_reco(settings, SPARK=spark):
            return [m.msg for m in messages_with("reco_plugin.E014")]

    (tmp_path / "kafka-clients-3.9.2.jar").write_bytes(b"")
    (found,) = connector_errors(tmp_path)
    assert "holds no spark-sql-kafka-0-10_*.jar" in found
    version = installed_pyspark_version()
    (tmp_path / "spark-sql-kafka-0-10_2.13-3.5.1.jar").write_bytes(b"")
    (found,) = connector_errors(tmp_path)
    assert f"is for Spark 3.5.1, the installed PySpark is {version}" in found
    (tmp_path / "spark-sql-kafka-0-10_2.13-3.5.1.jar").unlink()
    (tmp_path / f"spark-sql-kafka-0-10_2.13-{version}.jar").write_bytes(b"")
    assert connector_errors(tmp_path) == []
    # not on this machine (a web server): the check leaves it to reco_stream where it runs
    assert connector_errors(tmp_path / "elsewhere") == []


def test_the_install_guides_product_fields_fit_a_minimal_product_model(settings, monkeypatch):
    """docs/install.md's settings, pasted as written, on a product with only a
    name, a price and a URL: no E010. Its optional fields are there, commented."""
    import re
    from pathlib import Path

    from django.db import models
    from django.test.utils import isolate_apps

    from reco_plugin import checks

    guide = (Path(__file__).parent.parent / "docs" / "install.md").read_text()
    snippet = re.search(
        r"<!-- guide: myshop/settings.py append -->\n```python\n(.*?)```", guide, re.S
    )[1]
    pasted = {"INSTALLED_APPS": [], "MIDDLEWARE": [], "BASE_DIR": Path("/srv/myshop")}
    exec(snippet, pasted)
    fields = pasted["RECO_PLUGIN"]["PRODUCT_FIELDS"]
    for optional in ("category", "image", "description", "in_stock", "blocked", "repeatable"):
        assert f'# "{optional}": ' in snippet
    with isolate_apps("demo_shop.catalog") as registry:

        class Product(models.Model):
            name = models.CharField(max_length=200)
            price = models.DecimalField(max_digits=8, decimal_places=2)

            class Meta:
                app_label = "catalog"

            def __str__(self):
                return self.name

            def get_absolute_url(self):
                return f"/products/{self.pk}/"

        monkeypatch.setattr(checks, "apps", registry)
        with with_reco(settings, PRODUCT_FIELDS=fields):
            assert checks._product_field_checks() == []
        # uncommented, an optional field this model lacks is reported
        with with_reco(settings, PRODUCT_FIELDS={**fields, "in_stock": "in_stock"}):
            assert [m.id for m in checks._product_field_checks()] == ["reco_plugin.E010"]
