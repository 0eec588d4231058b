"""The one place the Django side opens Redis connections."""

from __future__ import annotations

import functools

import redis
import redis.asyncio

from .conf import reco_settings


@functools.cache
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(
        reco_settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
    )


def get_async_redis() -> redis.asyncio.Redis:
    # One client per event loop: an asyncio connection pool is bound to the loop it was made on.
    return redis.asyncio.Redis.from_url(
        reco_settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
    )


def reset() -> None:
    get_redis.cache_clear()
