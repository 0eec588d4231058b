"""Cart, order and login events: from model signals and ``reco_plugin.track``, on commit."""

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.db import transaction
from django.test import Client, RequestFactory

import reco_plugin

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def films(db):
    from decimal import Decimal

    from demo_shop.catalog.models import Product

    # bulk_create: no catalog sync queued for them
    return Product.objects.bulk_create(
        Product(id=pk, name=f"Film {pk}", category="Drama", price=Decimal(f"{pk}.50"))
        for pk in (1, 2, 3)
    )


def by_type(backend):
    return [
        (e["type"], e["product_id"], e.get("quantity"), e.get("price")) for e in backend.events()
    ]


def test_the_demo_cart_and_checkout_emit_cart_and_purchase_events(backend, films):
    client = Client()
    client.get("/products/1/")
    backend.clear()
    for pk in (1, 1, 2, 3):
        assert client.post(f"/cart/add/{pk}/").status_code == 302
    assert client.post("/cart/remove/3/").status_code == 302
    assert client.post("/checkout/").status_code == 200
    assert by_type(backend) == [
        ("add_to_cart", "1", 1, 1.5),
        ("add_to_cart", "1", 1, 1.5),
        ("add_to_cart", "2", 1, 2.5),
        ("add_to_cart", "3", 1, 3.5),
        ("remove_from_cart", "3", 1, 3.5),
        # one per line; clearing the cart at checkout is not a removal
        ("purchase", "1", 2, 1.5),
        ("purchase", "2", 1, 2.5),
    ]
    opaque = client.session["reco_visitor"]
    assert {e["visitor_id"] for e in backend.events()} == {f"s:{opaque}"}
    assert {topic for topic, _, _ in backend.sent} == {"cart_events", "purchase_events"}


def test_a_rolled_back_order_emits_nothing(backend, films, django_user_model):
    from demo_shop.catalog.models import Order, OrderLine

    user = django_user_model.objects.create_user("buyer", password="x")
    with pytest.raises(RuntimeError), transaction.atomic():
        order = Order.objects.create(user=user, total=1)
        OrderLine.objects.create(order=order, product=films[0], quantity=1, unit_price=1)
        raise RuntimeError("payment declined")
    assert backend.sent == []
    with transaction.atomic():
        order = Order.objects.create(user=user, total=1)
        OrderLine.objects.create(order=order, product=films[0], quantity=3, unit_price=1)
        assert backend.sent == []  # not before the commit
    assert [(e["type"], e["visitor_id"], e["quantity"]) for e in backend.events()] == [
        ("purchase", f"u:{user.pk}", 3)
    ]


def test_a_line_without_owner_outside_a_request_is_not_attributed(backend, films):
    from demo_shop.catalog.models import Order, OrderLine

    order = Order.objects.create(total=1)
    OrderLine.objects.create(order=order, product=films[0], quantity=1, unit_price=1)
    assert backend.sent == []


def request_with_session(**headers):
    request = RequestFactory().get("/", **headers)
    request.session = SessionStore()
    from django.contrib.auth.models import AnonymousUser

    request.user = AnonymousUser()
    return request


def test_track_emits_for_the_requests_visitor_on_commit(backend, films):
    request = request_with_session()
    event = reco_plugin.track(request, "add_to_cart", films[1], quantity=2, price="2.50")
    assert event["visitor_id"] == f"s:{request.session['reco_visitor']}"
    assert backend.events() == [event]
    assert (event["product_id"], event["quantity"], event["price"]) == ("2", 2, 2.5)

    backend.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        reco_plugin.track(request, "purchase", "1", quantity=1)
        raise RuntimeError
    assert backend.sent == []


def test_track_adds_the_requests_fields_only_to_its_own_visitors_events(backend, films, settings):
    settings.RECO_PLUGIN = {**settings.RECO_PLUGIN, "EVENT_REQUEST_FIELDS": ["ip"]}
    request = request_with_session(REMOTE_ADDR="198.51.100.4")
    own = reco_plugin.track(request, "click", films[0], context={"page": "/x/"})
    assert own["context"] == {"page": "/x/", "ip": "198.51.100.4"}
    # staff recording a customer's purchase: not the staff member's address
    other = reco_plugin.track(request, "purchase", films[0], visitor_id="u:999")
    assert "context" not in other


def test_track_refuses_an_unknown_type_and_skips_untracked_visitors(backend):
    with pytest.raises(ValueError, match="event type"):
        reco_plugin.track(request_with_session(), "identify", "1")
    assert (
        reco_plugin.track(request_with_session(HTTP_USER_AGENT="Googlebot/2.1"), "click", "1")
        is None
    )
    assert reco_plugin.track(request_with_session(HTTP_SEC_GPC="1"), "click", "1") is None
    assert reco_plugin.track(request_with_session(), "click", "") is None  # logged, not raised
    assert backend.sent == []


def test_login_links_the_anonymous_visitor_to_the_user(backend, films, django_user_model):
    user = django_user_model.objects.create_user("shopper", password="pw")
    client = Client()
    client.get("/products/1/")
    anonymous = f"s:{client.session['reco_visitor']}"
    session_key = client.session.session_key
    backend.clear()
    response = client.post("/accounts/login/", {"username": "shopper", "password": "pw"})
    assert response.status_code == 302
    [identify] = backend.events()
    assert identify["type"] == "identify" and "product_id" not in identify
    assert identify["visitor_id"] == f"u:{user.pk}"
    assert identify["context"] == {"previous": anonymous}
    assert client.session.session_key != session_key  # Django rotated the key; the id stays
    assert anonymous.removeprefix("s:") not in session_key

    backend.clear()
    client.get("/products/2/")
    assert backend.events()[0]["visitor_id"] == f"u:{user.pk}"

    # Logging out starts a new anonymous visitor, who starts with nothing.
    client.post("/accounts/logout/")
    backend.clear()
    client.get("/products/3/")
    after = backend.events()[0]["visitor_id"]
    assert after.startswith("s:") and after != anonymous


def test_login_without_an_earlier_visitor_emits_nothing(backend, django_user_model):
    django_user_model.objects.create_user("shopper", password="pw")
    client = Client()
    client.post("/accounts/login/", {"username": "shopper", "password": "pw"})
    assert backend.sent == []


def test_an_opted_out_users_cart_and_orders_are_not_tracked(backend, films, django_user_model):
    django_user_model.objects.create_user("private", password="pw")
    client = Client(HTTP_SEC_GPC="1")
    client.post("/accounts/login/", {"username": "private", "password": "pw"})
    client.post("/cart/add/1/")
    client.post("/checkout/")
    assert backend.sent == []


def test_a_failed_checkout_does_not_hide_later_removals(backend, films, django_user_model):
    from demo_shop.catalog.models import Cart, CartLine, Order, OrderLine

    user = django_user_model.objects.create_user("buyer", password="x")
    cart = Cart.objects.create(user=user)
    line = CartLine.objects.create(cart=cart, product=films[1], quantity=1, unit_price=1)
    line_pk = line.pk
    with pytest.raises(RuntimeError), transaction.atomic():
        order = Order.objects.create(user=user, total=1)
        OrderLine.objects.create(order=order, product=films[1], quantity=1, unit_price=1)
        line.delete()
        raise RuntimeError("payment declined")
    backend.clear()
    CartLine.objects.get(pk=line_pk).delete()  # the shopper changes their mind
    assert [(e["type"], e["product_id"]) for e in backend.events()] == [("remove_from_cart", "2")]


def test_logging_in_with_no_history_still_names_the_session_for_logout(backend, django_user_model):
    django_user_model.objects.create_user("direct", password="pw")
    client = Client()
    client.post("/accounts/login/", {"username": "direct", "password": "pw"})
    assert client.session.get("reco_visitor")  # the session's sockets can be told at logout
    assert backend.sent == []
