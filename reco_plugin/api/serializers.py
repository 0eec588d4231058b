from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .. import schema
from ..conf import reco_settings
from ..store import MAX_EXCLUDE


class RecommendedItemSerializer(serializers.Serializer):
    product_id = serializers.CharField()
    score = serializers.FloatField()
    strategy = serializers.CharField(
        help_text="the strategy that filled the slot: personal, similar, next, after, session, fbt, "
        "retrained, content, category, affinity, trending, trending_long or popular; "
        "pinned for a product a merchandising rule put at its position"
    )
    propensity = serializers.FloatField(
        help_text="the probability that the bandit chose this strategy for the slot; "
        "send it back with impressions and clicks for unbiased offline evaluation"
    )
    reco_id = serializers.CharField(help_text="send back in a click's context for attribution")
    position = serializers.IntegerField()
    title = serializers.CharField()
    url = serializers.CharField()
    price = serializers.CharField(allow_null=True)
    category = serializers.CharField()
    image = serializers.CharField()


class RecommendationListSerializer(serializers.Serializer):
    items = RecommendedItemSerializer(many=True)
    source = serializers.ChoiceField(
        choices=["personal", "product", "category", "trending", "similar", "fallback"],
        help_text="where the list came from: the visitor's own lists blended (personal); "
        "for a visitor without history, the first of product neighbours, category "
        "trending, global trending with items; fallback when Redis did not answer",
    )
    degraded = serializers.BooleanField(
        help_text="true when Redis did not answer and the list is a fallback"
    )


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": schema.MAX_CONTEXT_VALUE_LENGTH},
        "maxProperties": schema.MAX_CONTEXT_KEYS,
        "description": "page, referrer, and for a recommended item the reco_id, strategy, "
        "propensity and position it was shown with (keys of 1-"
        f"{schema.MAX_CONTEXT_KEY_LENGTH} characters)",
    }
)
class ContextField(serializers.Field):
    """A flat object of short strings: at most ``MAX_CONTEXT_KEYS`` keys of
    1-``MAX_CONTEXT_KEY_LENGTH`` characters, values of at most
    ``MAX_CONTEXT_VALUE_LENGTH``."""

    default_error_messages = {
        "not_object": "must be an object of strings",
        "too_many": f"at most {schema.MAX_CONTEXT_KEYS} keys",
    }

    def to_internal_value(self, data: Any) -> dict[str, str]:
        if not isinstance(data, dict):
            self.fail("not_object")
        if len(data) > schema.MAX_CONTEXT_KEYS:
            self.fail("too_many")
        errors = {}
        for key, value in data.items():
            if not 0 < len(key) <= schema.MAX_CONTEXT_KEY_LENGTH:
                errors[key[:80]] = [f"keys are 1-{schema.MAX_CONTEXT_KEY_LENGTH} characters"]
            elif not isinstance(value, str):
                errors[key] = ["must be a string"]
            elif len(value) > schema.MAX_CONTEXT_VALUE_LENGTH:
                errors[key] = [f"at most {schema.MAX_CONTEXT_VALUE_LENGTH} characters"]
        if errors:
            raise serializers.ValidationError(errors)
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class ProductIdField(serializers.CharField):
    """A product id as a string (a JSON number is accepted); whether the product
    is in the catalog is checked for the whole request at once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=schema.MAX_ID_LENGTH, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, int) and not isinstance(data, bool):
            data = str(data)
        if not isinstance(data, str):
            raise serializers.ValidationError("must be a string")
        return super().to_internal_value(data)


class BeaconEventSerializer(serializers.Serializer):
    """One event reported by the widget. The visitor and time are set by the server."""

    type = serializers.ChoiceField(choices=sorted(schema.BEACON_TYPES))
    product_id = ProductIdField()
    context = ContextField(required=False)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict):
            unknown = set(data) - set(self.fields)
            if unknown:
                raise serializers.ValidationError(
                    {
                        name: ["not accepted (set by the server, or unknown)"]
                        for name in sorted(unknown)
                    }
                )
        return super().to_internal_value(data)


class BeaconBatchSerializer(serializers.Serializer):
    events = BeaconEventSerializer(many=True, allow_empty=False)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict) and set(data) - {"events"}:
            raise serializers.ValidationError(
                {name: ["not accepted next to events"] for name in sorted(set(data) - {"events"})}
            )
        if isinstance(data, dict) and isinstance(data.get("events"), list):
            # Checked before the items: a long list is refused without validating it.
            if len(data["events"]) > reco_settings.MAX_BEACON_EVENTS:
                raise serializers.ValidationError(
                    {"events": [f"at most {reco_settings.MAX_BEACON_EVENTS} events per request"]}
                )
        return super().to_internal_value(data)


def list_query(params: Any) -> dict[str, Any]:
    """The query of a list request (``limit``, ``product``, ``category``,
    ``exclude``), as the OpenAPI parameters of the views document it; written
    out because a DRF serializer costs ~150 us on every request. Raises DRF's
    ``ValidationError`` with the same field -> messages shape."""
    errors: dict[str, list[str]] = {}
    found: dict[str, Any] = {}
    raw = params.get("limit")
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            errors["limit"] = ["A valid integer is required."]
        else:
            if limit < 1:
                errors["limit"] = ["Ensure this value is greater than or equal to 1."]
            elif limit > reco_settings.MAX_LIMIT:
                errors["limit"] = [f"at most {reco_settings.MAX_LIMIT}"]
            else:
                found["limit"] = limit
    for name, longest in (("product", schema.MAX_ID_LENGTH), ("category", 200)):
        value = params.get(name)
        if value is None:
            continue
        value = value.strip()
        if not value:
            continue  # given empty, as a form leaves it: not given
        if len(value) > longest:
            errors[name] = [f"Ensure this field has no more than {longest} characters."]
        else:
            found[name] = value
    raw = params.get("exclude")
    if raw is not None:
        ids = [part.strip() for part in raw.split(",") if part.strip()]
        if len(ids) > MAX_EXCLUDE:
            errors["exclude"] = [f"at most {MAX_EXCLUDE} ids"]
        elif any(len(i) > schema.MAX_ID_LENGTH for i in ids):
            errors["exclude"] = [f"ids are at most {schema.MAX_ID_LENGTH} characters"]
        else:
            found["exclude"] = frozenset(ids)
    if errors:
        raise serializers.ValidationError(errors)
    return found
