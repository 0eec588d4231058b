"""Redis addresses as one URL, Redis Sentinel included (no Django import: the
streaming job uses it too).

Besides redis-py's own forms (``redis://``, ``rediss://``, ``unix://``), a
Sentinel-managed primary is written::

    redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB][?sentinel_password=...]

for example ``redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/reco/0``:
three Sentinels watching the primary they know as ``reco``; the password (if
any) is the primary's, ``sentinel_password`` the Sentinels' own (if they ask
for one). Other query parameters are redis-py's connection options for the
primary, as redis-py reads them from any URL (``?ssl_cert_reqs=required&
ssl_ca_certs=/etc/ca.pem``, ``?health_check_interval=10``...). Every client made here asks the Sentinels for the primary when it
connects, and connects again (asking again) when the primary fails over.

One URL says it for every part: the web process, the streaming job and its
executors, the relay, and through :func:`channel_layer_host` and
:func:`celery_broker` the channel layer and Celery.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.connection
import redis.sentinel

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
DEFAULT_SENTINEL_PORT = 26379


class RedisURLError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class SentinelAddress:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False
    # redis-py connection options from the query string
    options: tuple[tuple[str, Any], ...] = ()

    def with_db(self, db: int) -> SentinelAddress:
        return dataclasses.replace(self, db=db)


def is_sentinel(url: str) -> bool:
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def parse_sentinel(url: str) -> SentinelAddress:
    """The parts of a ``redis+sentinel://`` URL; :class:`RedisURLError` says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise RedisURLError(f"not a redis+sentinel:// URL: {parts.scheme}://")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        try:
            sentinels.append((name or host, int(port) if port else DEFAULT_SENTINEL_PORT))
        except ValueError:
            raise RedisURLError(f"Sentinel address {host!r} is not HOST:PORT") from None
    if not sentinels:
        raise RedisURLError("a redis+sentinel:// URL names at least one Sentinel (HOST:PORT)")
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise RedisURLError(
            "a redis+sentinel:// URL's path is /SERVICE or /SERVICE/DB "
            "(the name the Sentinels know the primary by)"
        )
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise RedisURLError(f"database {path[1]!r} is not a number") from None
    query = parse_qs(parts.query)
    parsers = redis.connection.URL_QUERY_ARGUMENT_PARSERS
    options = []
    for name, values in query.items():
        if name == "sentinel_password":
            continue
        try:
            options.append((name, parsers[name](values[0]) if name in parsers else values[0]))
        except (TypeError, ValueError):
            raise RedisURLError(f"invalid value for {name!r} in the URL: {values[0]!r}") from None
    return SentinelAddress(
        sentinels=tuple(sentinels),
        service=path[0],
        db=db,
        username=username,
        password=password,
        sentinel_password=(query.get("sentinel_password") or [None])[0],
        ssl=SENTINEL_SCHEMES[parts.scheme],
        options=tuple(options),
    )


def with_db(url: str, db: int) -> str:
    """The same server (or Sentinel-managed primary) with another database."""
    parts = urlsplit(url)
    if parts.scheme in SENTINEL_SCHEMES:
        service = [p for p in parts.path.split("/") if p][:1]
        return parts._replace(path="/" + "/".join([*service, str(db)])).geturl()
    return parts._replace(path=f"/{db}").geturl()


def _sentinel_options(address: SentinelAddress, options: dict[str, Any]) -> dict[str, Any]:
    """Options for the connections to the Sentinels themselves: the timeouts of
    the primary's, and their own password."""
    kwargs = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options}
    if address.sentinel_password:
        kwargs["password"] = address.sentinel_password
    return kwargs


def _primary_options(address: SentinelAddress, options: dict[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {**dict(address.options), "db": address.db}
    if address.username:
        extra["username"] = address.username
    if address.password:
        extra["password"] = address.password
    if address.ssl:
        extra["ssl"] = True
    return {**extra, **options}


def connect(url: str, **options: Any) -> redis.Redis:
    """A client of the server at ``url`` (see the module's docstring); ``options``
    are redis-py's (timeouts, ``decode_responses``...)."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    address = parse_sentinel(url)
    sentinel = redis.sentinel.Sentinel(
        list(address.sentinels), sentinel_kwargs=_sentinel_options(address, options)
    )
    return sentinel.master_for(address.service, **_primary_options(address, options))


def connect_replica(url: str, **options: Any) -> redis.Redis:
    """A client of a replica the Sentinels of ``url`` name (in turn; the
    primary when none answers), for reads that may lag the primary."""
    address = parse_sentinel(url)
    sentinel = redis.sentinel.Sentinel(
        list(address.sentinels), sentinel_kwargs=_sentinel_options(address, options)
    )
    return sentinel.slave_for(address.service, **_primary_options(address, options))


def connect_async(url: str, **options: Any) -> redis.asyncio.Redis:
    """As :func:`connect`, for asyncio (one client per event loop)."""
    if not is_sentinel(url):
        return redis.asyncio.Redis.from_url(url, **options)
    address = parse_sentinel(url)
    sentinel = redis.asyncio.sentinel.Sentinel(
        list(address.sentinels), sentinel_kwargs=_sentinel_options(address, options)
    )
    return sentinel.master_for(address.service, **_primary_options(address, options))


def channel_layer_host(url: str, **options: Any) -> dict[str, Any]:
    """One entry of channels-redis's ``CONFIG["hosts"]`` for the server at ``url``."""
    if not is_sentinel(url):
        return {"address": url, **options}
    address = parse_sentinel(url)
    return {
        "sentinels": list(address.sentinels),
        "master_name": address.service,
        "sentinel_kwargs": _sentinel_options(address, options),
        **_primary_options(address, options),
    }


def celery_broker(url: str) -> tuple[str, dict[str, Any]]:
    """Celery's ``broker_url`` and ``broker_transport_options`` for ``url``
    (kombu's ``sentinel://`` form, its Sentinels separated by ``;``)."""
    if not is_sentinel(url):
        return url, {}
    address = parse_sentinel(url)
    credentials = ""
    if address.password:
        credentials = f"{address.username or ''}:{address.password}@"
    broker = ";".join(
        f"sentinel://{credentials}{host}:{port}/{address.db}" for host, port in address.sentinels
    )
    transport: dict[str, Any] = {"master_name": address.service}
    if address.sentinel_password:
        transport["sentinel_kwargs"] = {"password": address.sentinel_password}
    return broker, transport


def roles(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """What the Sentinels of ``url`` say: the primary's address, its replicas
    (address, link status, replication offset) and each Sentinel (up or not,
    and the primary it names). ``{}`` for a URL without Sentinels."""
    if not is_sentinel(url):
        return {}
    address = parse_sentinel(url)
    options = _sentinel_options(address, {"socket_timeout": timeout})
    result: dict[str, Any] = {"service": address.service, "sentinels": [], "replicas": []}
    for host, port in address.sentinels:
        entry: dict[str, Any] = {"address": f"{host}:{port}"}
        try:
            client = redis.Redis(
                host=host,
                port=port,
                decode_responses=True,
                socket_connect_timeout=timeout,
                protocol=2,
                **options,
            )
            primary = client.sentinel_get_master_addr_by_name(address.service)
            entry["up"] = True
            entry["primary"] = f"{primary[0]}:{primary[1]}" if primary else None
            if primary and not result["replicas"]:
                result["primary"] = entry["primary"]
                for replica in client.sentinel_slaves(address.service):
                    flags = replica.get("flags", "")
                    result["replicas"].append(
                        {
                            "address": f"{replica['ip']}:{replica['port']}",
                            "flags": flags if isinstance(flags, str) else ",".join(sorted(flags)),
                            "link": replica.get("master-link-status", ""),
                            "offset": int(replica.get("slave-repl-offset", 0) or 0),
                        }
                    )
            client.close()
        except (redis.RedisError, OSError) as exc:
            entry.update(up=False, error=f"{type(exc).__name__}: {exc}")
        result["sentinels"].append(entry)
    return result
