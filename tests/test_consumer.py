import pytest
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.sessions.backends.db import SessionStore

from reco_plugin import keys
from reco_plugin.live import live_sockets
from reco_plugin.routing import websocket_urlpatterns

from .conftest import put_catalog, put_list

pytestmark = pytest.mark.django_db(transaction=True)

application = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))


@sync_to_async
def new_session(opaque="abc123"):
    session = SessionStore()
    session["reco_visitor"] = opaque
    session.save()
    return session.session_key


def communicator(session_key=None):
    headers = []
    if session_key:
        headers.append((b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={session_key}".encode()))
    return WebsocketCommunicator(application, "/ws/reco/", headers=headers)


async def test_connection_without_a_visitor_is_closed_with_4401(redis_url):
    ws = communicator()
    connected, _ = await ws.connect()
    assert connected  # accepted, so that the browser sees the code
    assert await ws.receive_output(timeout=3) == {"type": "websocket.close", "code": 4401}


async def test_a_visitor_who_opted_out_gets_no_live_channel(r):
    key = await new_session("visitor-opted-out")
    headers = [(b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={key}; reco_opt_out=1".encode())]
    ws = WebsocketCommunicator(application, "/ws/reco/", headers=headers)
    assert (await ws.connect())[0]
    assert await ws.receive_output(timeout=3) == {"type": "websocket.close", "code": 4403}
    assert live_sockets().sockets_of(["s:visitor-opted-out"]) == []


async def test_subscribe_sends_the_list_and_updates_are_pushed(r):
    await sync_to_async(put_catalog)(r, [1, 2, 3, 4])
    await sync_to_async(put_list)(r, keys.product_similar("1"), [2, 3])
    key = await new_session("visitor-1")
    ws = communicator(key)
    connected, _ = await ws.connect()
    assert connected
    await ws.send_json_to({"type": "subscribe", "product": "1", "limit": 4})
    first = await ws.receive_json_from(timeout=5)
    assert first["type"] == "recommendations"
    assert [i["product_id"] for i in first["items"]] == ["2", "3"]

    # The pipeline writes a personal list, the relay notifies the visitor's group.
    await sync_to_async(put_list)(r, keys.visitor_recommendations("s:visitor-1"), [4])
    await get_channel_layer().group_send(keys.visitor_group("s:visitor-1"), {"type": "reco.update"})
    pushed = await ws.receive_json_from(timeout=5)
    assert [(i["product_id"], i["strategy"]) for i in pushed["items"]][:1] == [("4", "personal")]
    await ws.disconnect()


async def test_other_visitors_updates_are_not_pushed(r):
    key = await new_session("visitor-2")
    ws = communicator(key)
    assert (await ws.connect())[0]
    await get_channel_layer().group_send(
        keys.visitor_group("s:someone-else"), {"type": "reco.update"}
    )
    assert await ws.receive_nothing(timeout=0.5)
    await ws.disconnect()


async def test_bad_subscribe_gets_an_error_message(redis_url):
    key = await new_session("visitor-3")
    ws = communicator(key)
    assert (await ws.connect())[0]
    await ws.send_json_to({"type": "subscribe", "limit": 1000})
    reply = await ws.receive_json_from(timeout=5)
    assert reply["type"] == "error" and "limit" in reply["error"]
    await ws.send_json_to(["nope"])
    assert (await ws.receive_json_from(timeout=5))["type"] == "error"
    await ws.disconnect()


async def test_an_open_websocket_follows_its_visitor_when_they_log_in(r):
    await sync_to_async(put_catalog)(r, [5, 6])
    await sync_to_async(put_list)(r, keys.visitor_recommendations("u:7"), [6, 5])
    key = await new_session("visitor-4")
    ws = communicator(key)
    assert (await ws.connect())[0]
    # What the login receiver sends (tracking.user_logged_in).
    await get_channel_layer().group_send(
        keys.visitor_group("s:visitor-4"), {"type": "reco.identify", "visitor": "u:7"}
    )
    pushed = await ws.receive_json_from(timeout=5)
    assert [(i["product_id"], i["strategy"]) for i in pushed["items"]] == [
        ("6", "personal"),
        ("5", "personal"),
    ]
    # From now on the user's updates reach it, the anonymous visitor's do not.
    await get_channel_layer().group_send(keys.visitor_group("s:visitor-4"), {"type": "reco.update"})
    assert await ws.receive_nothing(timeout=0.3)
    await get_channel_layer().group_send(keys.visitor_group("u:7"), {"type": "reco.update"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "recommendations"

    # A logout in another session of the user leaves it open; in this one, closes it.
    await get_channel_layer().group_send(
        keys.visitor_group("u:7"), {"type": "reco.logout", "previous": "s:other"}
    )
    assert await ws.receive_nothing(timeout=0.3)
    await get_channel_layer().group_send(
        keys.visitor_group("u:7"), {"type": "reco.logout", "previous": "s:visitor-4"}
    )
    assert (await ws.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4409}


async def test_a_logged_in_users_websocket_is_theirs(r, django_user_model):
    from channels.db import database_sync_to_async
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    @database_sync_to_async
    def logged_in_session():
        user = django_user_model.objects.create_user("ws-shopper", password="x")
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        return user.pk, session.session_key

    pk, key = await logged_in_session()
    await sync_to_async(put_catalog)(r, [8])
    await sync_to_async(put_list)(r, keys.visitor_recommendations(f"u:{pk}"), [8])
    ws = communicator(key)
    assert (await ws.connect())[0]
    await ws.send_json_to({"type": "subscribe", "limit": 4})
    first = await ws.receive_json_from(timeout=5)
    assert [(i["product_id"], i["strategy"]) for i in first["items"]] == [("8", "personal")]
    await get_channel_layer().group_send(keys.visitor_group(f"u:{pk}"), {"type": "reco.update"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "recommendations"
    await ws.disconnect()


async def test_the_login_receiver_moves_the_open_websocket_to_the_user(r, django_user_model):
    from django.test import RequestFactory

    from reco_plugin import tracking

    await sync_to_async(put_catalog)(r, [9])
    key = await new_session("visitor-5")
    ws = communicator(key)
    assert (await ws.connect())[0]

    @sync_to_async
    def log_in():
        user = django_user_model.objects.create_user("ws-login", password="x")
        request = RequestFactory().post("/accounts/login/")
        request.session = SessionStore(session_key=key)
        put_list(r, keys.visitor_recommendations(f"u:{user.pk}"), [9])
        tracking.user_logged_in(sender=type(user), request=request, user=user)

    await log_in()
    pushed = await ws.receive_json_from(timeout=5)
    assert [(i["product_id"], i["strategy"]) for i in pushed["items"]] == [("9", "personal")]
    await ws.disconnect()


async def test_pushes_are_versioned_and_leave_out_the_pages_items(r):
    import time

    await sync_to_async(put_catalog)(r, [1, 2, 3, 4])
    await sync_to_async(put_list)(r, keys.product_similar("1"), [2, 3, 4])
    key = await new_session("visitor-5")
    ws = communicator(key)
    assert (await ws.connect())[0]
    await ws.send_json_to({"type": "subscribe", "product": "1", "exclude": ["3"]})
    first = await ws.receive_json_from(timeout=5)
    assert [i["product_id"] for i in first["items"]] == ["2", "4"]
    assert first["source"] == "product"
    await get_channel_layer().group_send(keys.visitor_group("s:visitor-5"), {"type": "reco.update"})
    second = await ws.receive_json_from(timeout=5)
    assert second["version"] > first["version"] > time.time_ns() // 1000 - 60_000_000
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from(timeout=5) == {"type": "pong"}
    await ws.send_json_to({"type": "subscribe", "exclude": "3"})
    assert "exclude" in (await ws.receive_json_from(timeout=5))["error"]
    await ws.disconnect()


async def relayed(r, visitors):
    """What the relay does with a notice: one message to the processes' group."""
    db = keys.db_of(r)
    await get_channel_layer().group_send(
        keys.live_group(db), {"type": "reco.updates", "visitors": visitors}
    )


async def test_a_notice_refreshes_the_open_sockets_of_the_visitors_it_names(r):
    await sync_to_async(put_catalog)(r, list(range(1, 10)))
    await sync_to_async(put_list)(r, keys.product_similar("1"), [2, 3])
    sockets = []
    for name in ("visitor-a", "visitor-b", "visitor-a"):  # visitor-a has two tabs
        ws = communicator(await new_session(name))
        assert (await ws.connect())[0]
        await ws.send_json_to({"type": "subscribe", "product": "1", "limit": 4})
        assert (await ws.receive_json_from(timeout=5))["source"] == "product"
        sockets.append(ws)
    assert len(live_sockets()) == 3
    await sync_to_async(put_list)(r, keys.visitor_recommendations("s:visitor-a"), [7, 8])
    await relayed(r, ["s:visitor-a", "s:nobody", 7, "s:visitor-a"])
    for ws in (sockets[0], sockets[2]):
        pushed = await ws.receive_json_from(timeout=5)
        assert pushed["source"] == "personal"
        assert {"7", "8"} <= {i["product_id"] for i in pushed["items"]}
    assert await sockets[1].receive_nothing(timeout=0.3)  # visitor-b was not named
    for ws in sockets:
        await ws.disconnect()
    assert len(live_sockets()) == 0  # and the process's listener stopped


async def test_a_notice_for_another_shops_database_is_not_heard(r):
    await sync_to_async(put_catalog)(r, [1, 2, 3])
    ws = communicator(await new_session("visitor-c"))
    assert (await ws.connect())[0]
    await ws.send_json_to({"type": "subscribe", "product": "1"})
    await ws.receive_json_from(timeout=5)
    await get_channel_layer().group_send(
        keys.live_group(keys.db_of(r) + 1), {"type": "reco.updates", "visitors": ["s:visitor-c"]}
    )
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()


async def test_the_relay_forwards_the_pipelines_notices(r):
    import asyncio
    import json

    from reco_plugin.push import relay_updates

    await sync_to_async(put_catalog)(r, list(range(1, 10)))
    ws = communicator(await new_session("visitor-d"))
    assert (await ws.connect())[0]
    await ws.send_json_to({"type": "subscribe", "product": "1"})
    await ws.receive_json_from(timeout=5)
    stop = asyncio.Event()
    relay = asyncio.ensure_future(relay_updates(stop))
    channel = keys.updates_channel(keys.db_of(r))
    for _ in range(100):
        if (await sync_to_async(r.pubsub_numsub)(channel))[0][1]:
            break
        await asyncio.sleep(0.05)
    await sync_to_async(put_list)(r, keys.visitor_recommendations("s:visitor-d"), [5])
    await sync_to_async(r.publish)(channel, "not json")  # ignored, the relay goes on
    await sync_to_async(r.publish)(channel, json.dumps(["s:visitor-d"]))
    pushed = await ws.receive_json_from(timeout=5)
    assert [i["product_id"] for i in pushed["items"]][:1] == ["5"]
    stop.set()
    await asyncio.wait_for(relay, 5)
    await ws.disconnect()


def test_reco_push_says_where_it_listens_and_pushes_when_it_starts(r, monkeypatch, capsys):
    """One line at start, also in a project whose LOGGING says nothing of the plugin."""
    import asyncio
    import logging

    from django.core.management import call_command

    from reco_plugin import push
    from reco_plugin.management.commands import reco_push

    async def started_and_stopped():
        stop = asyncio.Event()
        stop.set()
        await push.relay_updates(stop)

    monkeypatch.setattr(reco_push, "relay_updates", started_and_stopped)
    monkeypatch.setattr(logging.getLogger("reco_plugin"), "hasHandlers", lambda: False)
    call_command("reco_push")
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "reco_push" in x]
    db = keys.db_of(r)
    assert " INFO reco_push: relaying list updates from Redis redis://127.0.0.1:" in line
    assert f"channel {keys.updates_channel(db)}, " in line
    assert line.endswith(
        f"to the channel layer channels.layers.InMemoryChannelLayer, group {keys.live_group(db)}"
    )
    assert not logging.getLogger("reco_plugin").handlers  # the command's own handler is gone


def test_the_relay_names_a_redis_channel_layers_servers_without_passwords():
    from channels_redis.core import RedisChannelLayer

    from reco_plugin.push import layer_description

    layer = RedisChannelLayer(hosts=[{"address": "redis://:s3cret@cache:6379/2"}], prefix="shop2")
    assert layer_description(layer) == (
        "channels_redis.core.RedisChannelLayer at redis://:***@cache:6379/2, prefix 'shop2'"
    )
