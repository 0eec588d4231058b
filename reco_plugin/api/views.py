"""The recommendation API (SPEC §6). Reads Redis; never computes."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connections, router
from django.http import HttpResponseNotModified
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.cache import patch_vary_headers
from django.utils.http import parse_etags
from django.utils.module_loading import import_string
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import (
    APIException,
    ParseError,
    PermissionDenied,
    UnsupportedMediaType,
    ValidationError,
)
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from .. import store
from ..conf import reco_settings
from ..events import emit_many
from ..metrics import API_SECONDS
from ..schema import MAX_CONTEXT_KEYS, make_event
from ..visitor import REQUEST_FIELDS, is_tracked, request_fields, visitor_id_for
from .serializers import (
    BeaconBatchSerializer,
    BeaconEventSerializer,
    RecommendationListSerializer,
    list_query,
)


def _query(request: Request) -> dict[str, Any]:
    return list_query(request._request.GET)


@functools.cache
def _item_serializer(path: str | None) -> Any:
    return import_string(path) if path else None


def _items(items: list[dict[str, Any]]) -> Any:
    """Items as the shop wants them: through ``ITEM_SERIALIZER`` when set."""
    serializer = _item_serializer(reco_settings.ITEM_SERIALIZER)
    return serializer(items, many=True).data if serializer else items


def _listed(
    items: list[dict[str, Any]], source: str, *, public: bool, degraded: bool = False
) -> Response:
    """A list response; the caller says whether a shared cache may keep it."""
    response = Response({"items": _items(items), "source": source, "degraded": degraded})
    if degraded:
        response["Cache-Control"] = "no-store"
        response["Retry-After"] = str(int(reco_settings.REDIS_RETRY_SECONDS) or 1)
    elif public:
        response["Cache-Control"] = f"public, max-age={reco_settings.API_CACHE_SECONDS}"
    else:
        # the browser keeps it, and asks again with its ETag every time
        response["Cache-Control"] = "private, no-cache"
    return response


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


class ShopSessionScheme(OpenApiAuthenticationExtension):
    """:class:`ShopSessionUser` in the OpenAPI schema: Django's session cookie."""

    target_class = ShopSessionUser
    name = "shopSession"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": settings.SESSION_COOKIE_NAME,
            "description": "the shop's own session: a logged-in shopper's list and events "
            "are theirs, an anonymous visitor's their session's (answered without one too)",
        }


class RecoAPIView(APIView):
    schema = AutoSchema()
    # JSON answers only, whatever the client accepts (no browsable pages).
    renderer_classes = [JSONRenderer]
    # The API serves the session's visitor; no token or basic auth.
    authentication_classes: list[Any] = [ShopSessionUser]
    # anyone (the schema says so: the session is optional)
    permission_classes: list[Any] = [AllowAny]

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            API_SECONDS.labels(type(self).__name__).observe(time.perf_counter() - started)

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(exc, ValidationError):
            response.data = {"error": "invalid request", "detail": response.data}
        elif isinstance(response.data, dict) and "detail" in response.data:
            response.data = {"error": str(response.data["detail"])}
        return response


LIMIT = OpenApiParameter("limit", int, description="how many items (default 8)")
EXCLUDE = OpenApiParameter(
    "exclude", str, description="comma-separated product ids to leave out (e.g. already shown)"
)
CATEGORY = OpenApiParameter("category", str, description="only products of this category")


class ListView(RecoAPIView):
    """A list endpoint: an ETag on every answer (a 304 when the client has it),
    and a fallback list, never a 5xx, when Redis does not answer."""

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.status_code != 200:
            return response
        response.render()
        etag = '"' + hashlib.sha256(response.content).hexdigest()[:32] + '"'
        response["ETag"] = etag
        patch_vary_headers(response, ["Cookie"])
        # weak comparison (RFC 9110): a gzipping proxy or middleware sends W/"..."
        asked = parse_etags(request.headers.get("If-None-Match", ""))
        if "*" in asked or etag.removeprefix("W/") in {t.removeprefix("W/") for t in asked}:
            not_modified = HttpResponseNotModified()
            for header in ("ETag", "Cache-Control", "Vary"):
                not_modified[header] = response[header]
            return not_modified
        return response


class RecommendationsView(ListView):
    @extend_schema(
        parameters=[
            LIMIT,
            OpenApiParameter("product", str, description="product in context"),
            CATEGORY,
            EXCLUDE,
        ],
        responses=RecommendationListSerializer,
    )
    def get(self, request: Request) -> Response:
        query = _query(request)
        limit = query.get("limit", reco_settings.DEFAULT_LIMIT)
        exclude = query.get("exclude", frozenset())
        visitor_id = visitor_id_for(request._request, create=False)
        try:
            found = store.recommend(
                visitor_id,
                query.get("product"),
                limit,
                exclude=exclude,
                category=query.get("category"),
            )
        except store.Unavailable:
            product = query.get("product")
            items = store.fallback(
                query.get("category"), limit, exclude | {product} if product else exclude
            )
            return _listed(items, "fallback", public=False, degraded=True)
        return _listed(found.items, found.source, public=visitor_id is None)


class SimilarView(ListView):
    @extend_schema(parameters=[LIMIT, EXCLUDE], responses=RecommendationListSerializer)
    def get(self, request: Request, product_id: str) -> Response:
        query = _query(request)
        limit = query.get("limit", reco_settings.DEFAULT_LIMIT)
        exclude = query.get("exclude", frozenset())
        try:
            items = store.similar_to(product_id, limit, exclude=exclude)
        except store.Unavailable:
            items = store.fallback(None, limit, exclude | {product_id})
            return _listed(items, "fallback", public=False, degraded=True)
        return _listed(items, "similar", public=True)


class TrendingView(ListView):
    @extend_schema(parameters=[LIMIT, CATEGORY, EXCLUDE], responses=RecommendationListSerializer)
    def get(self, request: Request) -> Response:
        query = _query(request)
        limit = query.get("limit", reco_settings.DEFAULT_LIMIT)
        exclude = query.get("exclude", frozenset())
        try:
            items = store.trending(query.get("category"), limit, exclude=exclude)
        except store.Unavailable:
            items = store.fallback(query.get("category"), limit, exclude)
            return _listed(items, "fallback", public=False, degraded=True)
        return _listed(items, "trending", public=True)


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


class BodyTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class BeaconParser(JSONParser):
    """JSON only, at most ``MAX_BEACON_BYTES``, UTF-8, nesting bounded by the
    parser itself (a deep document is a 400, not a crash)."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        limit = reco_settings.MAX_BEACON_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise BodyTooLarge(f"the body is over {limit} bytes")
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ParseError(f"the body is not valid JSON: {str(exc)[:200]}") from None
        try:
            # An escaped lone surrogate ("\ud800") parses, but is no text: it
            # could be neither logged, answered nor sent on.
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ParseError("the body is not valid JSON: it escapes a lone surrogate") from None
        return data


class VisitorRateThrottle(SimpleRateThrottle):
    """``BEACON_RATE`` requests per visitor (per client address without a session),
    counted in Django's default cache: share it between processes (Redis or
    Memcached) for one limit across them."""

    scope = "reco_beacon"

    def get_rate(self) -> str | None:
        return reco_settings.BEACON_RATE

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        # Per visitor once they have a session; before (or without a session
        # cookie), per client address, so dropping the cookie gains nothing.
        visitor_id = visitor_id_for(request._request, create=False)
        ident = visitor_id or f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class AddressRateThrottle(SimpleRateThrottle):
    """``BEACON_RATE_PER_ADDRESS`` requests per client address: a client that
    starts a new session for every request still meets a limit."""

    scope = "reco_beacon_address"

    def get_rate(self) -> str | None:
        return reco_settings.BEACON_RATE_PER_ADDRESS

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


def _catalog_ids(product_ids: set[str]) -> dict[str, str]:
    """Each of ``product_ids`` that names a product in the shop's catalog ->
    that product's id as the catalog writes it (``"007"`` names product 7)."""
    model = apps.get_model(reco_settings.PRODUCT_MODEL)
    pk = model._meta.pk
    ranges = connections[router.db_for_read(model)].ops.integer_field_ranges
    low, high = ranges.get(pk.get_internal_type(), (None, None))
    wanted: dict[Any, list[str]] = {}
    for product_id in product_ids:
        try:
            value = pk.to_python(product_id)
        except (DjangoValidationError, TypeError, ValueError):
            continue
        if isinstance(value, int) and (
            (low is not None and value < low) or (high is not None and value > high)
        ):
            continue
        wanted.setdefault(value, []).append(product_id)
    found = model._default_manager.filter(pk__in=list(wanted)).values_list("pk", flat=True)
    return {given: str(value) for value in found for given in wanted.get(value, ())}


class EventsView(RecoAPIView):
    """The widget's beacon: clicks and impressions of the current visitor.

    One event or ``{"events": [...]}``, validated as a whole: one bad item
    refuses the request and nothing is emitted. Every refusal is a JSON 4xx
    naming what was wrong.
    """

    parser_classes = [BeaconParser]
    throttle_classes = [VisitorRateThrottle, AddressRateThrottle]

    @extend_schema(request=BeaconEventSerializer, responses={202: None})
    def post(self, request: Request) -> Response:
        # Size and type first: the CSRF check reads a form-encoded body.
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > reco_settings.MAX_BEACON_BYTES:
            raise BodyTooLarge(f"the body is over {reco_settings.MAX_BEACON_BYTES} bytes")
        if request.content_type.split(";")[0].strip().lower() != "application/json":
            raise UnsupportedMediaType(
                request.content_type or "none", "Content-Type must be application/json"
            )
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
        known = _catalog_ids({item["product_id"] for item in items})
        unknown = {item["product_id"] for item in items} - set(known)
        if unknown:
            raise ValidationError(
                {"product_id": [f"not in the catalog: {', '.join(sorted(unknown)[:10])}"]}
            )
        if not is_tracked(request._request):
            # A bot or a visitor who opted out: nothing is recorded.
            return Response({"accepted": 0}, status=status.HTTP_202_ACCEPTED)
        visitor_id = visitor_id_for(request._request)
        if visitor_id is None:
            raise PermissionDenied("no session: enable SessionMiddleware")
        asked = request_fields(request._request)  # EVENT_REQUEST_FIELDS: none by default
        contexts = []
        for item in items:
            # the request's own fields come from the request, never from the page
            sent = {k: v for k, v in (item.get("context") or {}).items() if k not in REQUEST_FIELDS}
            if len(sent) + len(asked) > MAX_CONTEXT_KEYS:
                raise ValidationError(
                    {"context": [f"at most {MAX_CONTEXT_KEYS - len(asked)} keys on this shop"]}
                )
            contexts.append({**sent, **asked} or None)
        events = [
            make_event(item["type"], visitor_id, known[item["product_id"]], context=context)
            for item, context in zip(items, contexts, strict=True)
        ]
        emit_many(events)
        return Response({"accepted": len(events)}, status=status.HTTP_202_ACCEPTED)
