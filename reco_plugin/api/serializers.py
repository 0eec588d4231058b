from __future__ import annotations

from typing import Any

from rest_framework import serializers

from .. import schema
from ..conf import reco_settings


class RecommendedItemSerializer(serializers.Serializer):
    product_id = serializers.CharField()
    score = serializers.FloatField()
    strategy = serializers.CharField(help_text="personal, similar or trending")
    reco_id = serializers.CharField(help_text="send back in a click's context for attribution")
    position = serializers.IntegerField()
    title = serializers.CharField()
    url = serializers.CharField()
    price = serializers.CharField(allow_null=True)
    category = serializers.CharField()
    image = serializers.CharField()


class RecommendationListSerializer(serializers.Serializer):
    items = RecommendedItemSerializer(many=True)


class ContextField(serializers.DictField):
    child = serializers.CharField(max_length=schema.MAX_CONTEXT_VALUE_LENGTH, allow_blank=True)

    def to_internal_value(self, data: Any) -> dict[str, str]:
        value = super().to_internal_value(data)
        if len(value) > schema.MAX_CONTEXT_KEYS:
            raise serializers.ValidationError(f"at most {schema.MAX_CONTEXT_KEYS} keys")
        return value


class BeaconEventSerializer(serializers.Serializer):
    """One event reported by the widget. The visitor and time are set by the server."""

    type = serializers.ChoiceField(choices=sorted(schema.BEACON_TYPES))
    product_id = serializers.CharField(max_length=schema.MAX_ID_LENGTH)
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

    def validate_events(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(value) > reco_settings.MAX_BEACON_EVENTS:
            raise serializers.ValidationError(
                f"at most {reco_settings.MAX_BEACON_EVENTS} events per request"
            )
        return value


class LimitSerializer(serializers.Serializer):
    limit = serializers.IntegerField(required=False, min_value=1)
    product = serializers.CharField(required=False, max_length=schema.MAX_ID_LENGTH)
    category = serializers.CharField(required=False, max_length=200)

    def validate_limit(self, value: int) -> int:
        if value > reco_settings.MAX_LIMIT:
            raise serializers.ValidationError(f"at most {reco_settings.MAX_LIMIT}")
        return value
