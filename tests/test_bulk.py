"""spark_jobs.bulk: one script call per chunk of keys leaves Redis as the
commands it stands for, sent one by one, do; and reads back what they read."""

import random

from spark_jobs import bulk, state
from stack.pipeline import redis_state

TTL = 3600
SET_TTL, VALUE_TTL, TREND_TTL = 3600, 1800, 900


def sets_and_values(rng):
    """Sorted sets' additions (some empty, one past a script's unpack limit,
    more keys than one call takes) over existing members, and string values."""
    added = {}
    for n in range(2 * bulk.KEYS_PER_CALL + 37):
        size = 0 if n % 7 == 0 else rng.randint(1, 12)
        added[f"t:set:{n:04d}"] = {
            f"p{rng.randint(1, 60)}": 1_790_000_000_000 + rng.randint(0, 10**9) for _ in range(size)
        }
    # past Lua's unpack() limit (~8,000 values) unless sent in parts
    added["t:set:large"] = {f"p{i}": i * 1.5 for i in range(3 * bulk.UNPACK + 5)}
    values = {f"t:value:{n:04d}": f'[["p{n}", {n}, 0.5]]' for n in range(bulk.KEYS_PER_CALL + 3)}
    increments = {
        f"t:trend:{n:03d}": {f"p{rng.randint(1, 40)}": rng.random() * 3 for _ in range(5)}
        for n in range(bulk.KEYS_PER_CALL + 11)
    }
    return added, values, increments


def old_members(r, added, rng):
    for key in added:
        if rng.random() < 0.5:
            r.zadd(key, {f"old{i}": rng.randint(1, 10**12) for i in range(rng.randint(1, 30))})


def test_writes_equal_the_commands_one_by_one(redis_url):
    r = state.connect(redis_url)
    rng = random.Random(3)
    added, values, increments = sets_and_values(rng)
    kept = 20

    results, ttls = [], []
    for by_script in (False, True):
        r.flushdb()
        old_members(r, added, random.Random(4))
        pipe = r.pipeline()
        if by_script:
            bulk.add_and_trim(pipe, added, kept, SET_TTL)
            bulk.set_expiring(pipe, values, VALUE_TTL)
            bulk.increment(pipe, increments, TREND_TTL)
            bulk.increment(pipe, increments, TREND_TTL)  # on what the first call left
        else:
            for key, members in added.items():
                if members:
                    pipe.zadd(key, members)
                pipe.zremrangebyrank(key, 0, -kept - 1)
                pipe.expire(key, SET_TTL)
            for key, value in values.items():
                pipe.set(key, value, ex=VALUE_TTL)
            for _ in range(2):
                for key, members in increments.items():
                    for member, by in members.items():
                        pipe.zincrby(key, by, member)
                    pipe.expire(key, TREND_TTL)
        pipe.execute()
        ttls.append({key: r.ttl(key) for key in r.scan_iter()})
        results.append(redis_state(r))

    # the same TTL on every key, give or take the seconds between the runs
    assert ttls[0].keys() == ttls[1].keys()
    assert all(abs(ttls[0][key] - ttls[1][key]) <= 2 for key in ttls[0]), ttls
    assert {round(ttl, -2) for ttl in ttls[1].values()} == {SET_TTL, VALUE_TTL, TREND_TTL}
    commands, scripts = results
    assert scripts == commands
    # what the comparison covers: every kind of key, trimmed, the large set whole
    assert len(scripts["t:set:large"]) == kept
    assert sum(key.startswith("t:set:") for key in scripts) > bulk.KEYS_PER_CALL
    assert sum(key.startswith("t:value:") for key in scripts) == len(values)
    assert sum(key.startswith("t:trend:") for key in scripts) == len(increments)


def test_reads_equal_the_commands_one_by_one(redis_url):
    r = state.connect(redis_url)
    rng = random.Random(5)
    set_keys, hash_keys = [], []
    for n in range(bulk.KEYS_PER_CALL + 20):
        key = f"t:set:{n}"
        set_keys.append(key)
        if n % 5:  # the rest are missing
            r.zadd(key, {f"p{i}": rng.randint(1, 10**13) / 7 for i in range(rng.randint(1, 9))})
        key = f"t:hash:{n}"
        hash_keys.append(key)
        if n % 3 == 1:
            r.hset(key, mapping={"category": f"c{n}", "price": str(n / 4)})
        elif n % 3 == 2:
            r.hset(key, mapping={"price": str(n)})  # no category

    assert bulk.ranges(r, set_keys) == [r.zrange(k, 0, -1, withscores=True) for k in set_keys]
    assert bulk.hashes(r, hash_keys) == [r.hgetall(k) for k in hash_keys]
    assert bulk.fields(r, hash_keys, "category", "price") == [
        r.hmget(k, "category", "price") for k in hash_keys
    ]
    assert bulk.fields(r, hash_keys, "category") == [[r.hget(k, "category")] for k in hash_keys]
    # what the comparison covers: members and scores, fields and missing ones
    assert sum(1 for found in bulk.ranges(r, set_keys) if found) == len(set_keys) * 4 // 5
    assert [None, "2"] in bulk.fields(r, hash_keys, "category", "price")
    assert bulk.ranges(r, []) == [] and bulk.hashes(r, []) == []
    # a visitor's set as the job reads it: product -> int(score)
    visitors = [key.removeprefix("t:set:") for key in set_keys]
    assert state.visitor_sets(r, lambda v: f"t:set:{v}", visitors) == {
        v: {p: int(score) for p, score in r.zrange(f"t:set:{v}", 0, -1, withscores=True)}
        for v in visitors
    }


def test_a_failing_command_fails_alone_in_the_transaction(redis_url):
    """In the commit's MULTI a command on a key of another type failed alone;
    in a script it does too: the other keys are written, then the error."""
    r = state.connect(redis_url)
    r.set("t:set:1", "a string")
    pipe = r.pipeline()
    added = {f"t:set:{n}": {"p": n} for n in range(3)}
    bulk.add_and_trim(pipe, added, 10, TTL)
    pipe.set("t:after", "1")
    replies = pipe.execute(raise_on_error=False)
    assert "WRONGTYPE" in str(replies[0])
    assert r.zrange("t:set:0", 0, -1) == ["p"] and r.zrange("t:set:2", 0, -1) == ["p"]
    assert r.get("t:set:1") == "a string" and r.get("t:after") == "1"
    assert r.ttl("t:set:2") > 0


def test_the_packer_packs_as_redis_py_and_leaves_what_it_cannot_to_it(monkeypatch):
    import enum

    import hiredis
    import pytest
    import redis
    from redis.connection import Connection

    class Small(enum.IntEnum):
        ONE = 1

    theirs = Connection()._command_packer
    packer = bulk.Packer()
    packed = []
    pack_command = hiredis.pack_command

    def counted(args):
        packed.append(args[0])
        return pack_command(args)

    commands = [
        ("EVALSHA", "f" * 40, 2, "reco:k:ü", b"raw\xff", 0, -5, 2**70, 1.5, 0.1, 1e-07, 1e20),
        ("SET", "k", -0.0, float("inf"), float("nan"), 1_796_652_901_344),
        ("CONFIG GET", "maxmemory"),  # a command name of two words
        ("SET", "k", Small.ONE),  # an int hiredis refuses: redis-py writes its repr
        ("SET", "k", bytearray(b"ab"), memoryview(b"cd")),
    ]
    expected = [b"".join(theirs.pack(*command)) for command in commands]
    monkeypatch.setattr(bulk.hiredis, "pack_command", counted)
    for command, bytes_ in zip(commands, expected, strict=True):
        assert b"".join(packer.pack(*command)) == bytes_, command
    # hiredis packed the common cases (and was tried on the ones it refuses)
    assert packed == ["EVALSHA", "SET", "SET", "SET"]
    for bad in (None, True, {"a": 1}):
        with pytest.raises(redis.DataError):
            theirs.pack("SET", "k", bad)
        with pytest.raises(redis.DataError):
            packer.pack("SET", "k", bad)
    with pytest.raises(UnicodeEncodeError):
        packer.pack("SET", "k", "\ud800")


def test_the_job_client_packs_with_the_packer(redis_url):
    r = state.connect(redis_url)
    assert isinstance(r.connection_pool.make_connection()._command_packer, bulk.Packer)
    latin = state.connect(f"{redis_url}?encoding=latin-1")
    assert not isinstance(latin.connection_pool.make_connection()._command_packer, bulk.Packer)
    r.set("t:packed", "é" * 3)
    assert r.get("t:packed") == "é" * 3
    assert r.eval("return ARGV[1] .. ARGV[2]", 0, 1.5, b"x") == "1.5x"
