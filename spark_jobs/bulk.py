"""The same Redis commands on many keys, sent as one script call per chunk of keys.

A visitor's memory is a few small keys (seen and bought sets, recent items):
read and written one command each, a catch-up batch of 5,000 visitors sent
~45,000 commands, each packed and parsed by redis-py (~15 µs of the job's
Python apiece, measured). Here Redis runs those commands itself, on the same
arguments, in the same order for each key, so the state is the same to the bit
(``tests/test_fold_digest.py``).

The writes go by ``EVAL``, not ``EVALSHA``: they are queued in the commit's
MULTI, where a script Redis no longer holds (``SCRIPT FLUSH``) would fail alone
while the rest of the commit applied.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import redis

# keys per script call: Redis serves nothing else while one runs (~10 ms)
KEYS_PER_CALL = 500
# arguments per ZADD inside a script: Lua's unpack() takes at most ~8,000
UNPACK = 2000

# ARGV: kept, ttl, then for each key: n, then n (score, member) pairs
_ADD_AND_TRIM = """
local kept, ttl, at = tonumber(ARGV[1]), ARGV[2], 3
for _, key in ipairs(KEYS) do
  local last = at + 2 * tonumber(ARGV[at])
  for first = at + 1, last, UNPACK do
    redis.call('ZADD', key, unpack(ARGV, first, math.min(first + UNPACK - 1, last)))
  end
  at = last + 1
  redis.call('ZREMRANGEBYRANK', key, 0, -kept - 1)
  redis.call('EXPIRE', key, ttl)
end
return #KEYS
""".replace("UNPACK", str(UNPACK))

# ARGV: ttl, then each key's value
_SET_EXPIRING = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
end
return #KEYS
"""

# ARGV: ttl, then for each key: n, then n (increment, member) pairs
_INCREMENT = """
local ttl, at = ARGV[1], 2
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[at])
  for i = at + 1, at + 2 * n, 2 do
    redis.call('ZINCRBY', key, ARGV[i], ARGV[i + 1])
  end
  at = at + 1 + 2 * n
  redis.call('EXPIRE', key, ttl)
end
return #KEYS
"""

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


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i : i + KEYS_PER_CALL] for i in range(0, len(items), KEYS_PER_CALL)]


def _pairs(values: Mapping[str, Any]) -> list[Any]:
    """n, then (score, member) for each member: ZADD's and ZINCRBY's order."""
    flat: list[Any] = [len(values)]
    for member, score in values.items():
        flat += (score, member)
    return flat


def add_and_trim(
    pipe: redis.client.Pipeline, added: Mapping[str, Mapping[str, Any]], kept: int, ttl: int
) -> None:
    """For each key (in ``added``'s order): ``ZADD`` its members (member ->
    score, in their order) if any, keep its ``kept`` highest, ``EXPIRE`` it."""
    for part in _chunks(list(added.items())):
        args: list[Any] = [kept, ttl]
        for _, values in part:
            args += _pairs(values)
        pipe.eval(_ADD_AND_TRIM, len(part), *(key for key, _ in part), *args)


def set_expiring(pipe: redis.client.Pipeline, values: Mapping[str, str | bytes], ttl: int) -> None:
    """``SET key value EX ttl`` for each key, in ``values``' order."""
    for part in _chunks(list(values.items())):
        pipe.eval(_SET_EXPIRING, len(part), *(key for key, _ in part), ttl, *(v for _, v in part))


def increment(
    pipe: redis.client.Pipeline, increments: Mapping[str, Mapping[str, Any]], ttl: int
) -> None:
    """For each key: ``ZINCRBY`` each member (member -> increment, in their
    order), then ``EXPIRE`` the key."""
    for part in _chunks(list(increments.items())):
        args: list[Any] = [ttl]
        for _, values in part:
            args += _pairs(values)
        pipe.eval(_INCREMENT, len(part), *(key for key, _ in part), *args)


@functools.cache
def _script(r: redis.Redis, source: str) -> Any:
    return r.register_script(source)


def _read(r: redis.Redis, source: str, all_keys: Sequence[str], *args: Any) -> list[Any]:
    found: list[Any] = []
    for part in _chunks(list(all_keys)):
        found.extend(_script(r, source)(keys=list(part), args=list(args)))
    return found


def ranges(r: redis.Redis, sorted_set_keys: Sequence[str]) -> list[list[tuple[str, float]]]:
    """Each sorted set's (member, score), lowest first (``ZRANGE ... WITHSCORES``)."""
    return [
        [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]
        for flat in _read(r, _RANGES, sorted_set_keys)
    ]


def hashes(r: redis.Redis, hash_keys: Sequence[str]) -> list[dict[str, str]]:
    """Each hash's fields and values (``HGETALL``)."""
    return [dict(zip(flat[::2], flat[1::2], strict=True)) for flat in _read(r, _HASHES, hash_keys)]


def fields(r: redis.Redis, hash_keys: Sequence[str], *names: str) -> list[list[str | None]]:
    """These fields of each hash (``HMGET``), None where missing."""
    return _read(r, _FIELDS, hash_keys, *names)
