"""``manage.py reco_replay``: the file's checks, and a replay on the real stack."""

import json
import random

import pytest
from django.core.management import CommandError, call_command

from reco_plugin.replay import read_rows
from stack.services import Ports, Stack


def write(tmp_path, text, name="events.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "header lacks visitor_id"),
        ("visitor_id,product_id,type\n1,2,page_view\n", "header lacks ts"),
        ("visitor_id,product_id,type,ts\n", "no events"),
        ("visitor_id,product_id,type,ts\n1,2,page_view,yesterday\n", "line 2: ts 'yesterday'"),
        ("visitor_id,product_id,type,ts\n1,2,page_view,1\n1,2,bogus,2\n", "line 3: type 'bogus'"),
        ("visitor_id,product_id,type,ts\n,2,page_view,1\n", "line 2: visitor_id"),
        ("visitor_id,product_id,type,ts\n1,,page_view,1\n", "line 2: product_id"),
        ("visitor_id,product_id,type,ts\n1,2,page_view,1,extra\n", "line 2: more fields"),
        ("visitor_id,product_id,type,ts,price\n1,2,purchase,1,-3\n", "line 2: price"),
        ("visitor_id,product_id,type,ts\n1,2,page_view,nan\n", "line 2: ts"),
    ],
)
def test_a_malformed_file_is_refused_with_the_line_and_the_reason(tmp_path, text, message):
    with pytest.raises(CommandError, match=message):
        call_command("reco_replay", str(write(tmp_path, text)))


def test_a_missing_or_binary_file_is_refused(tmp_path):
    with pytest.raises(CommandError, match="cannot be read"):
        call_command("reco_replay", str(tmp_path / "nope.csv"))
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"visitor_id,product_id,type,ts\n\xff\xfe,1,page_view,1\n")
    with pytest.raises(CommandError, match="not UTF-8"):
        call_command("reco_replay", str(binary))


def test_rows_are_read_in_time_order_with_visitor_ids_as_users(tmp_path):
    path = write(
        tmp_path, "visitor_id,product_id,type,ts,price\n7,b,purchase,20,9.5\ns:x,a,page_view,10,\n"
    )
    rows = read_rows(path)
    assert [(r.visitor_id, r.product_id, r.ts_ms, r.price) for r in rows] == [
        ("s:x", "a", 10_000, None),
        ("u:7", "b", 20_000, 9.5),
    ]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("replay"), Ports.free(), log=lambda line: None)
    try:
        stack.start_kafka()
        stack.start_redis()
        yield stack
    finally:
        stack.stop()


def planted(seed=5, visitors=500, pairs=100):
    """Every visitor views two products of a pair (a, a+pairs), a then its
    partner, for two pairs; every product is as popular as any other."""
    rng = random.Random(seed)
    lines = ["visitor_id,product_id,type,ts"]
    ts = 1_600_000_000
    for visitor in range(visitors):
        for a in rng.sample(range(pairs), 2):
            for product in (a, a + pairs):
                ts += 60
                lines.append(f"{visitor},{product},page_view,{ts}")
    return "\n".join(lines) + "\n"


# the lists that find the planted partner
FINDERS = ("similar", "next", "after", "session")


@pytest.mark.stack
def test_a_replay_finds_a_planted_pattern_that_popularity_cannot(services, settings, tmp_path):
    settings.RECO_PLUGIN = {
        **settings.RECO_PLUGIN,
        "KAFKA": {"bootstrap.servers": f"127.0.0.1:{services.ports.kafka}"},
        "REDIS_URL": services.redis_url,
        "PIPELINE": {"lake_path": str(tmp_path / "shop-lake")},
    }
    path = write(tmp_path, planted())
    out = tmp_path / "report.json"
    call_command("reco_replay", str(path), "--tick-events", "100", "--report", str(out))
    report = json.loads(out.read_text())
    assert report["events"] == 2000 and report["tick_events"] == 100
    # About half the trials are a partner after its pair's first product: found
    # by co-visitation, by where visitors went next (and right after), and by
    # what they viewed within minutes; flat popularity finds ~10 of 200
    # products.
    assert report["trials"] > 300
    assert report["system"]["hr@10"] > 0.3
    assert report["system"]["hr@10"] > 3 * report["popularity"]["hr@10"]
    assert report["item_knn"]["hr@10"] > 0.3
    for name in FINDERS:
        assert report[name]["hr@10"] > 0.3, name
    applied = sum(int(v) for k, v in report["counters"].items() if k.endswith(":applied"))
    assert applied == 2000
    # The bandit learnt which strategies find the pattern.
    beliefs = report["bandit"]
    best = sorted(beliefs, key=lambda name: -beliefs[name]["mean"])
    assert set(best[: len(FINDERS)]) == set(FINDERS), beliefs
    # The namespace is gone: no replay keys left, the shop's keys untouched,
    # and nothing was appended to the shop's event lake.
    r = services.redis()
    assert not list(r.scan_iter("reco-replay:*"))
    assert not (tmp_path / "shop-lake").exists()


@pytest.mark.parametrize(
    "config, message",
    [("{half_life", "not JSON"), ("[1]", "JSON object"), ('{"half_lfe": 1}', "unknown")],
)
def test_bad_pipeline_settings_to_try_are_refused(tmp_path, config, message):
    path = write(tmp_path, "visitor_id,product_id,type,ts\n1,2,page_view,1\n")
    with pytest.raises(CommandError, match=message):
        call_command("reco_replay", str(path), "--config", config)
