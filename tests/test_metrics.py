"""GET /reco/metrics: who may read it, and what it says."""

import pytest

from reco_plugin import keys

from .conftest import put_catalog, put_list

pytestmark = pytest.mark.django_db

URL = "/reco/metrics"


def samples(text, name):
    """``{labels: value}`` of one metric in the Prometheus text format."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            found[head[len(name) :]] = float(value)
    return found


def test_anonymous_and_shoppers_are_refused(client, django_user_model, redis_url):
    assert client.get(URL).status_code == 403
    client.force_login(django_user_model.objects.create_user("shopper", password="x"))
    refused = client.get(URL)
    assert refused.status_code == 403 and "METRICS_TOKEN" in refused.json()["error"]


def test_a_scraper_with_the_token_reads_it_and_a_wrong_token_does_not(client, settings, redis_url):
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "METRICS_TOKEN": "s3cret"}
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    answer = client.get(URL, HTTP_AUTHORIZATION="Bearer s3cret")
    assert answer.status_code == 200 and answer["Content-Type"].startswith("text/plain")


def test_staff_read_the_pipelines_and_this_processs_figures(
    client, django_user_model, r, redis_url
):
    client.force_login(django_user_model.objects.create_user("ops", password="x", is_staff=True))
    r.hset(
        keys.pipeline_counters(),
        mapping={"page_views:read": 12, "page_views:applied": 10, "page_views:duplicate": 2},
    )
    r.hset(keys.producer_stats(), mapping={"delivered": 40, "failed": 1, "dropped": 0})
    r.hset(
        keys.pipeline_last_batch(),
        mapping={"batch": 7, "rows": 12, "seconds": 0.42, "finished_at": 1_700_000_000.0},
    )
    put_catalog(r, [1, 2, 3])
    put_list(r, keys.trending(), [1, 2, 3])
    assert client.get("/reco/api/trending/").status_code == 200
    text = client.get(URL).content.decode()
    records = samples(text, "reco_pipeline_records_total")
    assert records['{status="applied",topic="page_views"}'] == 10
    assert records['{status="duplicate",topic="page_views"}'] == 2
    assert samples(text, "reco_events_total")['{outcome="delivered"}'] == 40
    assert samples(text, "reco_batch_duration_seconds") == {"": 0.42}
    assert samples(text, "reco_batch_records") == {"": 12}
    assert samples(text, "reco_up")['{service="redis"}'] == 1
    assert samples(text, "reco_up")['{service="job"}'] == 0  # no heartbeat: no job
    latency = samples(text, "reco_api_request_seconds_count")
    assert latency['{endpoint="TrendingView"}'] >= 1


def test_with_redis_down_the_metrics_say_so_instead_of_failing(client, django_user_model, settings):
    from stack.services import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "REDIS_URL": dead}
    client.force_login(django_user_model.objects.create_user("ops", password="x", is_staff=True))
    answer = client.get(URL)
    assert answer.status_code == 200
    assert samples(answer.content.decode(), "reco_up")['{service="redis"}'] == 0
