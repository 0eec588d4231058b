"""The one place the Django side opens Redis connections, and its circuit breaker.

Pages, the API and the websocket read Redis on the request path. When Redis is
refused, hung or slow, a request must not wait for it: reads use short socket
timeouts (``REDIS_TIMEOUT_SECONDS``), and after a failure the breaker stays
open for ``REDIS_RETRY_SECONDS``, during which reads fail at once with
:class:`Unavailable` instead of each waiting for its own timeout. The first read
after that period tries Redis again (and closes the breaker if it answers).

With Sentinels (a ``redis+sentinel://`` URL), reads made while the breaker is
open go to a replica instead (:func:`reading`): while the primary fails over,
shoppers get the lists as last replicated, not the fallbacks.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator

import redis
import redis.asyncio

from . import redis_url
from .conf import reco_settings

logger = logging.getLogger(__name__)


class Unavailable(Exception):
    """Redis did not answer (now, or recently enough that it is not asked again yet)."""


# Management commands, tasks and the relay may wait longer than a request.
WORK_TIMEOUT_SECONDS = 5.0


def _options(timeout: float | None = None) -> dict:
    timeout = float(timeout or reco_settings.REDIS_TIMEOUT_SECONDS)
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": True,
        # the breaker decides when to try again; no retries inside one request
        "retry_on_timeout": False,
    }


@functools.cache
def get_redis() -> redis.Redis:
    """The request path's client: short timeouts; read it under ``breaker.guard()``."""
    return redis_url.connect(reco_settings.REDIS_URL, **_options())


@functools.cache
def get_work_redis() -> redis.Redis:
    """For commands and tasks (catalog sync, status, counters): longer timeouts."""
    return redis_url.connect(reco_settings.REDIS_URL, **_options(WORK_TIMEOUT_SECONDS))


@functools.cache
def get_replica_redis() -> redis.Redis | None:
    """A replica's client (the Sentinels name it; the primary when there is
    none) for reads while the primary fails; None without Sentinels."""
    url = reco_settings.REDIS_URL
    if not redis_url.is_sentinel(url):
        return None
    return redis_url.connect_replica(url, **_options())


def get_async_redis() -> redis.asyncio.Redis:
    # One client per event loop: an asyncio connection pool is bound to the loop it was made on.
    return redis_url.connect_async(reco_settings.REDIS_URL, **_options(WORK_TIMEOUT_SECONDS))


class Breaker:
    """Open after a failure for ``retry_seconds``; thread-safe, per process."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.open_until = 0.0
        self.failures = 0
        self.last_error = ""
        self.probing = False

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run a read of Redis; raises :class:`Unavailable` if Redis failed
        now or within the last ``REDIS_RETRY_SECONDS``. After that period one
        caller at a time tries Redis (the others still fail at once)."""
        with self.lock:
            if self.clock() < self.open_until:
                raise Unavailable(self.last_error)
            probe = bool(self.failures)
            if probe:
                if self.probing:
                    raise Unavailable(self.last_error)
                self.probing = True
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self.trip(exc)
            raise Unavailable(str(exc)) from exc
        else:
            if probe:
                with self.lock:
                    self.failures = 0
                logger.warning("reco: Redis answers again")
        finally:
            if probe:
                with self.lock:
                    self.probing = False

    def is_open(self) -> bool:
        """Reads would fail at once now (or one is trying Redis again)."""
        with self.lock:
            return self.clock() < self.open_until or self.probing

    def trip(self, exc: BaseException) -> None:
        with self.lock:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.open_until = self.clock() + float(reco_settings.REDIS_RETRY_SECONDS)
        logger.warning(
            "reco: Redis failed (%s); serving fallbacks for %s s",
            self.last_error,
            reco_settings.REDIS_RETRY_SECONDS,
        )

    def reset(self) -> None:
        with self.lock:
            self.open_until = 0.0
            self.failures = 0
            self.last_error = ""
            self.probing = False


breaker = Breaker()
# the replica's own, so a replica that fails too is not asked on every read
replica_breaker = Breaker()


@contextlib.contextmanager
def reading() -> Iterator[redis.Redis]:
    """The client a read of the request path uses, under its breaker: the
    primary; while the primary's breaker is open and Sentinels name a replica,
    the replica (its lists behind the primary's by the replication's delay).
    Raises :class:`Unavailable` as :meth:`Breaker.guard` does."""
    replica = get_replica_redis()
    if replica is not None and breaker.is_open():
        with replica_breaker.guard():
            yield replica
        return
    with breaker.guard():
        yield get_redis()


def reset() -> None:
    get_redis.cache_clear()
    get_work_redis.cache_clear()
    get_replica_redis.cache_clear()
    breaker.reset()
    replica_breaker.reset()


def shown_url(url: str | None = None) -> str:
    """The Redis URL (the shop's by default) as it may be shown or logged: its
    password, if any, replaced by ``***``."""
    import re
    from urllib.parse import urlsplit, urlunsplit

    url = reco_settings.REDIS_URL if url is None else url
    parts = urlsplit(url)
    # redis-py also takes ?password=... in the query
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    netloc = parts.netloc
    if parts.password:
        user = f"{parts.username}:" if parts.username else ":"
        netloc = f"{user}***@{netloc.rsplit('@', 1)[1]}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))
