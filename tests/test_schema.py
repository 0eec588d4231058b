import json

import pytest

from reco_plugin import schema


def test_make_event_has_every_required_field():
    event = schema.make_event("page_view", "s:abc", 42, context={"page": "/products/42/"})
    assert event["schema"] == 1
    assert event["type"] == "page_view"
    assert event["product_id"] == "42"
    assert event["visitor_id"] == "s:abc"
    assert len(event["event_id"]) == 36
    assert abs(event["ts"] - schema.now_ms()) < 5000
    assert event["context"] == {"page": "/products/42/"}


def test_event_ids_are_unique():
    ids = {schema.make_event("click", "u:1", "1")["event_id"] for _ in range(100)}
    assert len(ids) == 100


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schema": 2}, "schema"),
        ({"type": "hover"}, "type"),
        ({"visitor_id": "alice"}, "visitor_id"),
        ({"product_id": ""}, "product_id"),
        ({"product_id": "x" * 65}, "product_id"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": True}, "ts"),
        ({"quantity": -1}, "quantity"),
        ({"price": -3.0}, "price"),
        ({"context": {"page": 5}}, "context"),
        ({"context": {str(i): "" for i in range(17)}}, "context"),
    ],
)
def test_validate_rejects_malformed_events(change, message):
    event = {**schema.make_event("click", "u:1", "1"), **change}
    with pytest.raises(schema.InvalidEvent, match=message):
        schema.validate(event)


def test_encode_decode_round_trip():
    event = schema.make_event("purchase", "u:7", "9", quantity=2, price=12.5, category="Drama")
    assert schema.decode(schema.encode(event)) == event


def test_decode_rejects_non_objects():
    with pytest.raises(schema.InvalidEvent):
        schema.decode(b"[1, 2]")
    with pytest.raises(schema.InvalidEvent):
        schema.decode(b"{not json")


def test_every_event_type_has_a_topic_and_topics_are_configurable():
    for event_type in schema.EVENT_TYPES:
        assert schema.topic_for(event_type) in schema.DEFAULT_TOPICS.values()
    assert schema.topic_for("page_view") == "page_views"
    assert schema.topic_for("add_to_cart") == schema.topic_for("remove_from_cart") == "cart_events"
    assert schema.topic_for("click", {**schema.DEFAULT_TOPICS, "user_clicks": "shop1.clicks"}) == (
        "shop1.clicks"
    )


def test_spark_struct_follows_the_schema_fields():
    # The Spark job derives its StructType from schema.FIELDS; the JSON the
    # Django side writes must only use those names.
    event = schema.make_event(
        "purchase", "u:7", "9", quantity=2, price=1.0, category="c", context={"a": "b"}
    )
    assert set(json.loads(schema.encode(event))) <= {name for name, _ in schema.FIELDS}
