"""Pages, the API and the websocket when Redis is refused, hung or paused.

A dead Redis costs one short timeout per REDIS_RETRY_SECONDS, not one per
request; the API answers a fallback list (never a 5xx), the page renders, the
websocket closes with an application code.
"""

import os
import signal
import socket
import threading
import time

import pytest
import redis as redis_lib
from django.test import override_settings

from reco_plugin import keys, store
from reco_plugin.consumers import CLOSE_NO_PUSH, CLOSE_UNAVAILABLE
from stack.services import free_port

from .conftest import put_catalog, put_list, start_redis_server
from .test_consumer import communicator, new_session

pytestmark = pytest.mark.django_db

TIMEOUT = 0.3
RETRY = 2.0


def point_at(settings, url, **more):
    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "REDIS_URL": url,
        "REDIS_TIMEOUT_SECONDS": TIMEOUT,
        "REDIS_RETRY_SECONDS": RETRY,
        **more,
    }


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


class HungServer:
    """Accepts connections and never answers (a hung Redis, or a black-holed route)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def hung():
    server = HungServer()
    yield server
    server.close()


@pytest.fixture
def warmed(client, r):
    """Trending served once while Redis answered: the process keeps it as its fallback."""
    store.reset()
    put_catalog(r, [1, 2, 3, 4])
    put_list(r, keys.trending(), [3, 2, 1, 4])
    response = client.get("/reco/api/trending/")
    assert [i["product_id"] for i in response.json()["items"]] == ["3", "2", "1", "4"]
    return ["3", "2", "1", "4"]


def test_redis_refused_the_api_answers_the_fallback_fast(client, settings, warmed):
    point_at(settings, f"redis://127.0.0.1:{free_port()}/0")
    for path in (
        "/reco/api/recommendations/?product=2",
        "/reco/api/trending/",
        "/reco/api/products/2/similar/",
    ):
        response, took = timed(lambda p=path: client.get(p))
        assert response.status_code == 200, path
        body = response.json()
        assert body["degraded"] is True and body["source"] == "fallback"
        assert response["Cache-Control"] == "no-store" and response["Retry-After"] == "2"
        assert took < TIMEOUT + 0.5
    # the product in context is not offered on its own page
    response = client.get("/reco/api/recommendations/?product=2&exclude=1")
    assert [i["product_id"] for i in response.json()["items"]] == ["3", "4"]
    assert {i["strategy"] for i in response.json()["items"]} == {"fallback"}


def test_a_hung_redis_costs_one_timeout_then_answers_come_at_once(client, settings, warmed, hung):
    point_at(settings, f"redis://127.0.0.1:{hung.port}/0")
    first, first_took = timed(lambda: client.get("/reco/api/recommendations/"))
    assert first.status_code == 200 and first.json()["degraded"] is True
    assert TIMEOUT * 0.8 <= first_took < TIMEOUT + 0.5
    took = [timed(lambda: client.get("/reco/api/recommendations/"))[1] for _ in range(20)]
    assert max(took) < 0.1, took  # the breaker is open: Redis is not asked
    assert [i["product_id"] for i in client.get("/reco/api/trending/").json()["items"]] == warmed
    # after REDIS_RETRY_SECONDS one request tries Redis again
    time.sleep(RETRY)
    _, retry_took = timed(lambda: client.get("/reco/api/recommendations/"))
    assert retry_took >= TIMEOUT * 0.8


def test_a_page_renders_at_once_with_redis_hung(client, settings, warmed, hung, make_product):
    make_product(2)
    point_at(settings, f"redis://127.0.0.1:{hung.port}/0")
    first, first_took = timed(lambda: client.get("/products/2/"))
    second, second_took = timed(lambda: client.get("/products/2/"))
    for page in (first, second):
        assert page.status_code == 200
        html = page.content.decode()
        html = html[html.index('class="reco-widget"') :]
        # the last trending list, less the page's own product
        assert 'data-product-id="3"' in html and 'data-product-id="2"' not in html
    assert first_took < TIMEOUT + 1.0 and second_took < 0.3


def redis_process(tmp_path):
    process, port = start_redis_server(tmp_path)
    return process, port, redis_lib.Redis(port=port, decode_responses=True)


def test_redis_paused_mid_stream_then_resumed(client, settings, tmp_path):
    process, port, own = redis_process(tmp_path)
    try:
        point_at(settings, f"redis://127.0.0.1:{port}/0")
        store.reset()
        put_catalog(own, [1, 2, 3])
        put_list(own, keys.trending(), [1, 2, 3])
        assert client.get("/reco/api/trending/").json()["degraded"] is False
        os.kill(process.pid, signal.SIGSTOP)
        paused, took = timed(lambda: client.get("/reco/api/trending/"))
        assert paused.status_code == 200 and paused.json()["degraded"] is True
        assert [i["product_id"] for i in paused.json()["items"]] == ["1", "2", "3"]
        assert took < TIMEOUT + 0.5
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(RETRY)
        back = client.get("/reco/api/trending/")
        assert back.json()["degraded"] is False and back.json()["source"] == "trending"
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        process.wait(10)


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_closes_with_an_application_code_when_redis_is_down(
    settings, redis_url
):
    point_at(settings, f"redis://127.0.0.1:{free_port()}/0")
    ws = communicator(await new_session("visitor-down"))
    connected, _ = await ws.connect()
    assert connected
    # the channel layer (in memory here) works: the socket opens, and its
    # first read of Redis closes it with the code
    await ws.send_json_to({"type": "subscribe", "product": "1"})
    closed = await ws.receive_output(timeout=3)
    assert closed == {"type": "websocket.close", "code": CLOSE_UNAVAILABLE}


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_closes_with_an_application_code_when_the_layers_redis_is_down(
    redis_url,
):
    dead = {"BACKEND": "channels_redis.core.RedisChannelLayer"}
    dead["CONFIG"] = {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]}
    closed = await closed_under({"default": dead}, "visitor-layer-down", wait=5)
    assert closed == {"type": "websocket.close", "code": CLOSE_UNAVAILABLE}


async def closed_under(channel_layers, visitor, wait):
    """What a websocket accepted under these CHANNEL_LAYERS receives next."""
    from channels import layers

    with override_settings(CHANNEL_LAYERS=channel_layers):
        layers.channel_layers.backends.clear()
        try:
            ws = communicator(await new_session(visitor))
            connected, _ = await ws.connect()
            assert connected
            return await ws.receive_output(timeout=wait)
        finally:
            layers.channel_layers.backends.clear()


@pytest.mark.django_db(transaction=True)
async def test_live_updates_resume_after_the_layers_redis_restarts(r, tmp_path):
    from asgiref.sync import sync_to_async
    from channels import layers
    from channels.layers import get_channel_layer

    from reco_plugin.live import live_sockets

    process, port = start_redis_server(tmp_path)
    layer = {"BACKEND": "channels_redis.core.RedisChannelLayer"}
    layer["CONFIG"] = {"hosts": [{"address": f"redis://127.0.0.1:{port}/0", "max_connections": 50}]}
    try:
        with override_settings(CHANNEL_LAYERS={"default": layer}):
            layers.channel_layers.backends.clear()
            await sync_to_async(put_catalog)(r, [1, 2, 3, 4, 5])
            session = await new_session("visitor-restart")
            ws = communicator(session)
            assert (await ws.connect())[0]
            await ws.send_json_to({"type": "subscribe", "product": "1"})
            await ws.receive_json_from(timeout=5)
            process.kill()
            process.wait(10)
            # the socket's own channel fails with the layer: it ends (the
            # widget reconnects), and the process's listener lets it go
            with pytest.raises(redis_lib.ConnectionError):
                await ws.receive_output(timeout=5)
            assert len(live_sockets()) == 0
            process, _ = await sync_to_async(start_redis_server)(tmp_path, port)
            again = communicator(session)
            assert (await again.connect())[0]
            await again.send_json_to({"type": "subscribe", "product": "1"})
            await again.receive_json_from(timeout=5)
            await sync_to_async(put_list)(r, keys.visitor_recommendations("s:visitor-restart"), [4])
            await get_channel_layer().group_send(
                keys.live_group(keys.db_of(r)),
                {"type": "reco.updates", "visitors": ["s:visitor-restart"]},
            )
            pushed = await again.receive_json_from(timeout=5)
            assert pushed["source"] == "personal" and pushed["items"][0]["product_id"] == "4"
            await again.disconnect()
    finally:
        layers.channel_layers.backends.clear()
        process.kill()
        process.wait(10)


@pytest.mark.django_db(transaction=True)
async def test_without_a_channel_layer_the_websocket_says_so_instead_of_failing(redis_url):
    closed = await closed_under({}, "visitor-no-layer", wait=3)
    assert closed == {"type": "websocket.close", "code": CLOSE_NO_PUSH}


def test_after_the_retry_period_one_caller_tries_redis_and_the_others_do_not_wait(settings):
    from reco_plugin.redis_client import Breaker, Unavailable

    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "REDIS_RETRY_SECONDS": 5.0}
    now = [100.0]
    breaker = Breaker(clock=lambda: now[0])
    with pytest.raises(Unavailable), breaker.guard():
        raise redis_lib.TimeoutError("Timeout reading from socket")
    with pytest.raises(Unavailable, match="Timeout"), breaker.guard():
        raise AssertionError("not run while open")
    now[0] += 5.0
    with breaker.guard():  # the probe
        with pytest.raises(Unavailable), breaker.guard():
            raise AssertionError("a second caller does not probe too")
    # the probe succeeded: closed again
    with breaker.guard():
        pass
    assert breaker.failures == 0 and not breaker.probing


def test_while_the_primary_fails_over_reads_go_to_a_replica(
    client, settings, redis_url, r, monkeypatch
):
    """A redis+sentinel URL whose primary does not answer: the first read trips
    the breaker (one fallback), then reads go to the replica the Sentinels name
    (here the test's Redis, holding the lists) until the primary answers again."""
    from reco_plugin import redis_client
    from reco_plugin import redis_url as urls

    put_catalog(r, [1, 2, 3, 4])
    put_list(r, keys.trending(), [4, 3, 2, 1])
    replica = redis_lib.Redis.from_url(redis_url, decode_responses=True, socket_timeout=TIMEOUT)
    asked = []
    monkeypatch.setattr(
        urls, "connect_replica", lambda url, **options: asked.append(url) or replica
    )
    dead = free_port()
    monkeypatch.setattr(
        urls,
        "connect",
        lambda url, **options: redis_lib.Redis(port=dead, **options),
    )
    store.reset()
    point_at(settings, f"redis+sentinel://127.0.0.1:{free_port()}/reco/0")
    first = client.get("/reco/api/trending/").json()
    assert first["degraded"] is True
    assert redis_client.breaker.is_open()
    for _ in range(3):
        body = client.get("/reco/api/trending/").json()
        assert body["degraded"] is False, body
        assert [i["product_id"] for i in body["items"]] == ["4", "3", "2", "1"]
    # the recommendations too, catalog fields included (read from the replica,
    # not the primary); a product whose fields this process has not read yet
    put_catalog(r, [5])
    put_list(r, keys.popular(), [5])
    for _ in range(3):
        body = client.get("/reco/api/recommendations/?limit=5").json()
        assert body["degraded"] is False, body
        assert {i["product_id"] for i in body["items"]} == {"1", "2", "3", "4", "5"}
    assert len(asked) == 1
    # without Sentinels there is no replica to ask: the fallback, as before
    point_at(settings, f"redis://127.0.0.1:{dead}/0")
    store.reset()
    assert client.get("/reco/api/trending/").json()["degraded"] is True
    assert client.get("/reco/api/trending/").json()["degraded"] is True
