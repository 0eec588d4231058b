"""The recommendation API (SPEC §6). Reads Redis; never computes."""

from __future__ import annotations

from typing import Any

from django.middleware.csrf import CsrfViewMiddleware
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import store
from ..conf import reco_settings
from ..events import emit_many
from ..schema import make_event
from ..visitor import visitor_id_for
from .serializers import (
    BeaconBatchSerializer,
    BeaconEventSerializer,
    LimitSerializer,
    RecommendationListSerializer,
)


def _query(request: Request) -> dict[str, Any]:
    params = LimitSerializer(data=request.query_params)
    params.is_valid(raise_exception=True)
    return params.validated_data


class ShopSessionUser(BaseAuthentication):
    """The user Django's AuthenticationMiddleware found for the session.

    With no authentication class DRF replaces the request's user with an
    anonymous one, and a logged-in shopper's API reads and beacon events would
    go to their ``s:`` id while their page views go to ``u:<pk>``. CSRF is not
    checked here: the beacon checks it for every visitor, logged in or not.
    """

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        user = getattr(request._request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        return (user, None)


class RecoAPIView(APIView):
    schema = AutoSchema()
    # The API serves the session's visitor; no token or basic auth.
    authentication_classes: list[Any] = [ShopSessionUser]
    permission_classes: list[Any] = []

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(exc, ValidationError):
            response.data = {"error": "invalid request", "detail": response.data}
        elif isinstance(response.data, dict) and "detail" in response.data:
            response.data = {"error": str(response.data["detail"])}
        return response


LIMIT = OpenApiParameter("limit", int, description="how many items (default 8)")


class RecommendationsView(RecoAPIView):
    @extend_schema(
        parameters=[LIMIT, OpenApiParameter("product", str, description="product in context")],
        responses=RecommendationListSerializer,
    )
    def get(self, request: Request) -> Response:
        query = _query(request)
        visitor_id = visitor_id_for(request._request, create=False)
        items = store.recommendations_for(
            visitor_id, query.get("product"), query.get("limit", reco_settings.DEFAULT_LIMIT)
        )
        return Response({"items": items})


class SimilarView(RecoAPIView):
    @extend_schema(parameters=[LIMIT], responses=RecommendationListSerializer)
    def get(self, request: Request, product_id: str) -> Response:
        query = _query(request)
        items = store.similar_to(product_id, query.get("limit", reco_settings.DEFAULT_LIMIT))
        return Response({"items": items})


class TrendingView(RecoAPIView):
    @extend_schema(
        parameters=[LIMIT, OpenApiParameter("category", str)],
        responses=RecommendationListSerializer,
    )
    def get(self, request: Request) -> Response:
        query = _query(request)
        items = store.trending(
            query.get("category"), query.get("limit", reco_settings.DEFAULT_LIMIT)
        )
        return Response({"items": items})


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: Any, reason: str) -> str:  # type: ignore[override]
        return reason


def _enforce_csrf(request: Request) -> None:
    # DRF checks CSRF only for session-authenticated users; the beacon writes
    # on behalf of anonymous sessions too, so it always checks.
    check = _CsrfCheck(lambda request: None)  # type: ignore[arg-type, return-value]
    check.process_request(request._request)
    reason = check.process_view(request._request, None, (), {})
    if reason:
        raise PermissionDenied(f"CSRF failed: {reason}")


class EventsView(RecoAPIView):
    """The widget's beacon: clicks and impressions of the current visitor."""

    @extend_schema(request=BeaconEventSerializer, responses={202: None})
    def post(self, request: Request) -> Response:
        _enforce_csrf(request)
        data = request.data
        if not isinstance(data, dict):
            raise ValidationError({"non_field_errors": ["expected a JSON object"]})
        if "events" in data:
            batch = BeaconBatchSerializer(data=data)
            batch.is_valid(raise_exception=True)
            items = batch.validated_data["events"]
        else:
            single = BeaconEventSerializer(data=data)
            single.is_valid(raise_exception=True)
            items = [single.validated_data]
        visitor_id = visitor_id_for(request._request)
        if visitor_id is None:
            raise PermissionDenied("no session: enable SessionMiddleware")
        events = [
            make_event(item["type"], visitor_id, item["product_id"], context=item.get("context"))
            for item in items
        ]
        emit_many(events)
        return Response({"accepted": len(events)}, status=status.HTTP_202_ACCEPTED)
