"""The same Redis commands on many keys, sent as one script call per chunk of keys.

A visitor's memory is a few small keys (seen and bought sets, recent items,
clicks): read and written one command each, a catch-up batch of 20,000 events
(~5,000 visitors) sent ~45,000 commands, each packed and parsed by redis-py
(~15 µs of the job's Python apiece, measured). Here Redis runs those commands
itself, on the same arguments, in the same order for each key, so the state is
the same (``tests/test_bulk.py``; ``tests/test_fold_digest.py``'s digest of
the parsed state).

The writes go by ``EVAL``, not ``EVALSHA``: they are queued in the commit's
MULTI, where a script Redis no longer holds (``SCRIPT FLUSH``) would fail alone
while the rest of the commit applied. A command that fails in a write script
(a key of another type) fails alone, as it did in the MULTI: the script goes
on with the other keys and then returns the first error. The reads go by
``EVALSHA`` (loaded again after a ``NOSCRIPT``), ``KEYS_PER_READ`` keys a
call.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import hiredis
import redis
from redis._parsers import Encoder
from redis.connection import PythonRespSerializer

# keys per script call (the commit's writes are one transaction anyway)
KEYS_PER_CALL = 500
# keys per read: Redis serves nothing else while one runs (100 seen sets of
# 500 items, the most a visitor keeps, took 23 ms of Redis's time here)
KEYS_PER_READ = 50
# arguments per ZADD inside a script: Lua's unpack() takes at most ~8,000
UNPACK = 2000


class Packer:
    """Commands packed by hiredis in one call (``command_packer=Packer()``).

    redis-py's own hiredis packer encodes each argument in Python first
    (~0.66 µs an argument here, against ~0.18 µs for hiredis alone): a
    catch-up batch's commit and each partition's reads send ~55,000
    arguments apiece. hiredis packs str (as UTF-8), bytes, int and float
    (by ``repr``) as redis-py does; any other argument, a command name
    holding a space (``"CONFIG GET"``), or an encoding error goes to
    redis-py's packer, which raises its own errors (``tests/test_bulk.py``)."""

    def __init__(self) -> None:
        self._fallback = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)

    def pack(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " not in args[0]:
            try:
                return [hiredis.pack_command(args)]
            except (TypeError, UnicodeError):
                pass
        return self._fallback.pack(*args)


# a write script's frame: each command's error kept, the first returned at the end
_WRITE = """
local failed
local function call(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err and not failed then failed = reply end
  return reply
end
BODY
if failed then return failed end
return #KEYS
"""


def _write_script(body: str) -> str:
    return _WRITE.replace("BODY", body.strip())


# ARGV: kept, ttl, then for each key: n, then n (score, member) pairs
_ADD_AND_TRIM = _write_script(
    """
local kept, ttl, at = tonumber(ARGV[1]), ARGV[2], 3
for _, key in ipairs(KEYS) do
  local last = at + 2 * tonumber(ARGV[at])
  for first = at + 1, last, UNPACK do
    call('ZADD', key, unpack(ARGV, first, math.min(first + UNPACK - 1, last)))
  end
  at = last + 1
  call('ZREMRANGEBYRANK', key, 0, -kept - 1)
  call('EXPIRE', key, ttl)
end
""".replace("UNPACK", str(UNPACK))
)

# ARGV: ttl, then each key's value
_SET_EXPIRING = _write_script("""
for i, key in ipairs(KEYS) do
  call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
end
""")

# ARGV: ttl, then for each key: n, then n (increment, member) pairs
_INCREMENT = _write_script("""
local ttl, at = ARGV[1], 2
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[at])
  for i = at + 1, at + 2 * n, 2 do
    call('ZINCRBY', key, ARGV[i], ARGV[i + 1])
  end
  at = at + 1 + 2 * n
  call('EXPIRE', key, ttl)
end
""")

# the reads: each key's reply, in KEYS' order
_RANGES = """
local found = {}
for i, key in ipairs(KEYS) do
  found[i] = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
end
return found
"""

_HASHES = """
local found = {}
for i, key in ipairs(KEYS) do
  found[i] = redis.call('HGETALL', key)
end
return found
"""

# ARGV: the fields (a missing one is nil)
_FIELDS = """
local found = {}
for i, key in ipairs(KEYS) do
  found[i] = redis.call('HMGET', key, unpack(ARGV))
end
return found
"""


def chunks(items: Sequence[Any], size: int = KEYS_PER_CALL) -> Iterator[Sequence[Any]]:
    """``items`` in slices of ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pairs(values: Mapping[str, Any]) -> list[Any]:
    """n, then (score, member) for each member: ZADD's and ZINCRBY's order."""
    flat: list[Any] = [len(values)]
    for member, score in values.items():
        flat += (score, member)
    return flat


def _eval_per_key(
    pipe: redis.client.Pipeline,
    source: str,
    header: Sequence[Any],
    per_key: Mapping[str, Mapping[str, Any]],
) -> None:
    """``source`` on each chunk of ``per_key``'s keys: ARGV is ``header``,
    then each key's :func:`_pairs`."""
    for part in chunks(list(per_key.items())):
        args = list(header)
        for _, values in part:
            args += _pairs(values)
        pipe.eval(source, len(part), *(key for key, _ in part), *args)


def add_and_trim(
    pipe: redis.client.Pipeline, added: Mapping[str, Mapping[str, Any]], kept: int, ttl: int
) -> None:
    """For each key (in ``added``'s order): ``ZADD`` its members (member ->
    score, in their order) if any, keep its ``kept`` highest, ``EXPIRE`` it."""
    _eval_per_key(pipe, _ADD_AND_TRIM, (kept, ttl), added)


def set_expiring(pipe: redis.client.Pipeline, values: Mapping[str, str | bytes], ttl: int) -> None:
    """``SET key value EX ttl`` for each key, in ``values``' order."""
    for part in chunks(list(values.items())):
        pipe.eval(_SET_EXPIRING, len(part), *(key for key, _ in part), ttl, *(v for _, v in part))


def increment(
    pipe: redis.client.Pipeline, increments: Mapping[str, Mapping[str, Any]], ttl: int
) -> None:
    """For each key: ``ZINCRBY`` each member (member -> increment, in their
    order), then ``EXPIRE`` the key."""
    _eval_per_key(pipe, _INCREMENT, (ttl,), increments)


@functools.cache
def _script(r: redis.Redis, source: str) -> Any:
    return r.register_script(source)


def _read(r: redis.Redis, source: str, all_keys: Sequence[str], *args: Any) -> list[Any]:
    found: list[Any] = []
    for part in chunks(list(all_keys), KEYS_PER_READ):
        found.extend(_script(r, source)(keys=list(part), args=list(args)))
    return found


def flat_ranges(r: redis.Redis, sorted_set_keys: Sequence[str]) -> list[list[str]]:
    """Each sorted set's members and scores as Redis gives them, lowest first
    (``ZRANGE ... WITHSCORES``: member, score, member, score...)."""
    return _read(r, _RANGES, sorted_set_keys)


def ranges(r: redis.Redis, sorted_set_keys: Sequence[str]) -> list[list[tuple[str, float]]]:
    """Each sorted set's (member, score), lowest first (``ZRANGE ... WITHSCORES``)."""
    return [
        list(zip(flat[::2], map(float, flat[1::2]), strict=True))
        for flat in flat_ranges(r, sorted_set_keys)
    ]


def hashes(r: redis.Redis, hash_keys: Sequence[str]) -> list[dict[str, str]]:
    """Each hash's fields and values (``HGETALL``)."""
    return [dict(zip(flat[::2], flat[1::2], strict=True)) for flat in _read(r, _HASHES, hash_keys)]


def fields(r: redis.Redis, hash_keys: Sequence[str], *names: str) -> list[list[str | None]]:
    """These fields of each hash (``HMGET``), None where missing."""
    return _read(r, _FIELDS, hash_keys, *names)
