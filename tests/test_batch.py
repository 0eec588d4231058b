"""One micro-batch's scoring and commit on plain rows against a real Redis (no Spark)."""

import json
import uuid
from unittest import mock

import pytest

from reco_plugin import keys, schema, strategies
from reco_plugin.scoring import PipelineSettings
from spark_jobs import batch, learn, lists, recovery, score, state

SETTINGS = PipelineSettings()


class Batches:
    """Feeds rows shaped like ``transforms.parse``'s through the batch's steps."""

    def __init__(self, redis_url, settings=SETTINGS, experiment=None):
        self.settings = settings
        self.experiment = experiment
        self.redis_url = redis_url
        self.r = state.connect(redis_url)
        self.batch_id = 0
        self.offset = 0
        self.now = schema.now_ms()
        self.lease = recovery.Lease(self.r)
        assert self.lease.acquire()

    def row(
        self,
        type_,
        visitor_id,
        product_id,
        previous=None,
        seconds_ago=60,
        category=None,
        strategy=None,
        reco_id=None,
        *,
        event_id=None,
        ts=None,
    ):
        """A row at the next offset: a new event id and ``seconds_ago`` before
        now, unless ``event_id`` and ``ts`` (ms) are given."""
        self.offset += 1
        return (
            "page_views",
            0,
            self.offset,
            1,
            type_,
            str(uuid.uuid4()) if event_id is None else event_id,
            visitor_id,
            product_id,
            (self.now - seconds_ago * 1000) if ts is None else ts,
            previous,
            category,
            strategy,
            reco_id,
        )

    def again(self, row):
        """The same event at a later offset (a beacon sent twice, a producer's copy)."""
        self.offset += 1
        return (*row[:2], self.offset, *row[3:])

    def run(self, rows, lists=True, catching_up=False):
        """Score and commit ``rows``; then, unless ``lists`` is False (the job
        died there), write the lists the commit changes, as the job's driver
        does, or as a batch catching up a backlog (``catching_up``)."""
        settings = self.settings
        clock = state.clock(self.r)
        landmark = score.landmark(clock, self.now, settings)
        held = recovery.position(self.r)
        changes = self.score(rows, landmark)
        clock_ms = max(clock, changes.newest_ts)
        assert state.commit(
            self.r,
            self.lease.token,
            held.offsets,
            ("q", self.batch_id),
            changes,
            landmark_ms=landmark,
            clock_ms=clock_ms,
            previous_clock_ms=clock,
            now_ms=self.now,
            settings=settings,
            catching_up=catching_up,
        )
        self.batch_id += 1
        if not lists:
            return changes
        # every list the batch changes, as the job writes them (on the driver)
        processor = batch.BatchProcessor(self.redis_url, settings, lease=self.lease)
        processor.started_ms = self.now
        processor.experiment = self.experiment
        processor._lists(
            self.r, None, state.pending(self.r), clock_ms, batch.Steps(), spread=catching_up
        )
        return changes

    def score(self, rows, landmark_ms):
        """``rows`` scored against the state as it is (nothing committed)."""
        return next(
            score.score_partition(
                rows,
                redis_url=self.redis_url,
                settings=self.settings,
                landmark_ms=landmark_ms,
                now_ms=self.now,
                held=dict(recovery.position(self.r).offsets),
                experiment=self.experiment,
            )
        )

    def list(self, key):
        raw = self.r.get(key)
        return [item["product_id"] for item in json.loads(raw)] if raw else []

    def recent(self, visitor_id):
        return [pid for pid, _, _ in state.recent_items(self.r, [visitor_id])[visitor_id]]

    def personal(self, visitor_id):
        raw = self.r.get(keys.visitor_recommendations(visitor_id))
        return [item["product_id"] for item in json.loads(raw)] if raw else []


@pytest.fixture
def batches(redis_url):
    return Batches(redis_url)


@pytest.mark.parametrize("same_batch", [False, True], ids=["later batch", "same batch"])
def test_identify_moves_the_anonymous_history_to_the_user(batches, same_batch):
    # Others teach that 1 goes with 10 and 2 with 20.
    rows = []
    for n in range(3):
        rows += [batches.row("page_view", f"s:other{n}", p) for p in ("1", "10", "2", "20")]
    batches.run(rows)
    before = [batches.row("page_view", "s:anon", "1"), batches.row("page_view", "s:anon", "2")]
    identify = batches.row("identify", "u:7", None, previous="s:anon", seconds_ago=1)
    if same_batch:
        changes = batches.run([identify, *before])
    else:
        batches.run(before)
        assert batches.personal("u:7") == []
        changes = batches.run([identify])
    assert "u:7" in changes.touched_visitors()
    assert set(batches.recent("u:7")) == {"1", "2"}
    assert {"10", "20"} <= set(batches.personal("u:7"))
    assert "page_views:malformed" not in batches.r.hgetall(keys.pipeline_counters())


def test_identify_keeps_the_users_own_history_and_counts_once(batches):
    batches.run([batches.row("page_view", "u:8", "5", seconds_ago=600)])
    batches.run([batches.row("page_view", "s:anon8", "6")])
    identify = batches.row("identify", "u:8", None, previous="s:anon8", seconds_ago=1)
    batches.run([identify])
    assert batches.recent("u:8") == ["6", "5"]  # newest first
    batches.run([batches.again(identify)])  # the same event again: a duplicate
    counters = batches.r.hgetall(keys.pipeline_counters())
    assert counters["page_views:duplicate"] == "1"
    assert batches.recent("u:8") == ["6", "5"]


@pytest.mark.parametrize("previous", [None, "", "u:3", "x:1", "s:" + "a" * 70])
def test_identify_without_a_valid_anonymous_visitor_is_malformed(batches, previous):
    batches.run([batches.row("identify", "u:9", None, previous=previous)])
    counters = batches.r.hgetall(keys.pipeline_counters())
    assert counters["page_views:malformed"] == "1"
    assert "page_views:applied" not in counters


def put(r, key, product_ids):
    r.set(key, json.dumps([{"product_id": p, "score": 1.0} for p in product_ids]))


def test_the_bandit_moves_weight_to_the_strategy_that_earns_rewards(batches):
    r = batches.r
    visitors = [f"s:v{n}" for n in range(30)]
    batches.run([batches.row("page_view", v, "ctx", seconds_ago=120) for v in visitors])
    # Planted: what each visitor views next is in the similar list of the page
    # they are on; personal, fbt and retrained lists hold other things.
    targets = [f"t{n}" for n in range(10)]
    put(r, keys.product_similar("ctx"), targets)
    put(r, keys.product_fbt("ctx"), [f"x{n}" for n in range(10)])
    put(r, keys.product_retrained("ctx"), [f"y{n}" for n in range(10)])
    for v in visitors:
        put(r, keys.visitor_recommendations(v), [f"z{n}" for n in range(10)])
    batches.run([batches.row("page_view", v, targets[n % 10]) for n, v in enumerate(visitors)])
    evidence = state.evidence(r)
    assert evidence["similar"] == (30.0, 30.0)
    for loser in ("personal", "fbt", "retrained"):
        assert evidence[loser] == (0.0, 30.0)
    # no list to judge (trending and popular held only what the visitors had seen)
    assert "trending" not in evidence
    stats = r.hgetall(keys.bandit_stats())
    assert stats["similar:successes"] == "30" and stats["personal:trials"] == "30"
    # the policy served gives similar nearly every slot it can fill
    policy = strategies.Policy(json.loads(r.get(keys.bandit_policy())))
    chances = dict(
        zip(
            ["personal", "similar", "fbt"],
            policy.chances(["personal", "similar", "fbt"]),
            strict=True,
        )
    )
    assert chances["similar"] > 0.9 > 0.05 > chances["personal"]
    assert abs(sum(chances.values()) - 1) < 1e-9


def test_the_bandit_forgets_with_its_discount(batches):
    batches.settings = PipelineSettings.from_mapping({"bandit_discount": 0.5})
    r = batches.r
    r.hset(keys.bandit(), mapping={"personal:click": "10 40", "similar:click": "20 20"})
    batches.run([batches.row("impression", "s:a", "p1", strategy="personal")])
    evidence = state.evidence(r)
    # one impression: every strategy's click evidence halves once, then it is added
    assert evidence["personal:click"] == (5.0, 21.0)
    assert evidence["similar:click"] == (10.0, 10.0)
    # its click, in a later batch, adds a success and no trial: no discount
    batches.run([batches.row("click", "s:a", "p1", strategy="personal")])
    assert state.evidence(r)["personal:click"] == (6.0, 21.0)


def test_impressions_and_clicks_reward_the_strategy_they_came_from(batches):
    rows = [batches.row("impression", f"s:{n}", "p1", strategy="trending") for n in range(10)]
    rows += [batches.row("click", f"s:{n}", "p1", strategy="trending") for n in range(4)]
    rows += [batches.row("impression", "s:x", "p2", strategy="no-such-strategy")]
    batches.run(rows)
    stats = batches.r.hgetall(keys.bandit_stats())
    assert stats["trending:impressions"] == "10" and stats["trending:clicks"] == "4"
    assert state.evidence(batches.r)["trending:click"] == (4.0, 10.0)
    assert not any(field.startswith("no-such") for field in stats)
    # with clicks known, a strategy clicked more counts more in the policy
    batches.r.hset(keys.bandit(), mapping={"similar:click": "1 10", "similar": "50 100"})
    batches.r.hset(keys.bandit(), "trending", "50 100")
    value = strategies.policy(state.evidence(batches.r), exploration=0.0, seed=1)
    chances = strategies.Policy(value).chances(["similar", "trending"])
    assert chances[1] > 0.8


def test_frequently_bought_together_comes_from_baskets(batches):
    rows = []
    for n in range(4):
        v = f"s:b{n}"
        rows += [batches.row("purchase", v, "milk"), batches.row("purchase", v, "bread")]
        # viewed together, never bought together: not a basket pair
        rows += [batches.row("page_view", v, "milk"), batches.row("page_view", v, "jam")]
    batches.run(rows)
    # a basket spread over two batches (minutes apart) pairs too
    batches.run([batches.row("purchase", "s:late", "milk", seconds_ago=300)])
    batches.run([batches.row("purchase", "s:late", "butter", seconds_ago=200)])
    assert batches.list(keys.product_fbt("milk")) == ["bread", "butter"]
    assert batches.list(keys.product_fbt("bread")) == ["milk"]
    assert "jam" in batches.list(keys.product_similar("milk"))


def test_lists_never_hold_what_the_visitor_saw_or_cannot_be_shown(batches):
    r = batches.r
    r.sadd(keys.catalog_unavailable(), "gone")
    r.sadd(keys.catalog_repeatable(), "coffee")
    rows = []
    for n in range(3):
        rows += [batches.row("page_view", f"s:o{n}", p) for p in ("a", "b", "c", "gone", "coffee")]
    batches.run(rows)
    assert "gone" not in batches.list(keys.product_similar("a"))
    assert "gone" not in batches.list(keys.trending())
    me = "s:me"
    batches.run([batches.row("page_view", me, "a"), batches.row("purchase", me, "coffee")])
    batches.run([batches.row("page_view", me, "b")])
    seen = set(batches.r.zrange(keys.visitor_seen(me), 0, -1))
    # bought coffee is repeatable: it may come back
    assert seen == {"a", "b"}
    personal = batches.personal(me)
    assert "c" in personal and "coffee" in personal
    assert not {"a", "b", "gone"} & set(personal)


def test_seen_items_follow_a_login(batches):
    batches.run([batches.row("page_view", "s:anon", "a")])
    batches.run([batches.row("identify", "u:1", None, previous="s:anon", seconds_ago=1)])
    assert set(batches.r.zrange(keys.visitor_seen("u:1"), 0, -1)) == {"a"}


def test_a_batch_adds_to_the_seen_sets_and_trims_them_to_what_is_kept(batches):
    rows = [
        batches.row("page_view", v, str(p), seconds_ago=600 - p)
        for p in range(30)
        for v in ("s:a", "s:b")
    ]
    batches.run(rows)
    r = batches.r
    r.persist(keys.visitor_seen("s:a"))
    # fewer kept now; s:a views again what it has seen (purchases only count
    # as seen now: its set gains nothing), s:b views something new
    batches.settings = PipelineSettings.from_mapping({"seen_kept": 10, "exclude_seen": False})
    batches.run(
        [
            batches.row("page_view", "s:a", "3", seconds_ago=5),
            batches.row("purchase", "s:b", "x", seconds_ago=5),
        ]
    )
    latest = [str(p) for p in range(20, 30)]
    assert r.zrange(keys.visitor_seen("s:a"), 0, -1) == latest
    assert r.zrange(keys.visitor_seen("s:b"), 0, -1) == [*latest[1:], "x"]
    # the set of a visitor active in the batch lives visitor_ttl from it
    assert 0 < r.ttl(keys.visitor_seen("s:a")) <= batches.settings.visitor_ttl


def test_trending_per_category_over_both_windows(batches):
    rows = [batches.row("page_view", f"s:{n}", "drama1", category="Drama") for n in range(3)]
    rows += [batches.row("page_view", "s:x", "comedy1", category="Comedy")]
    # two hours ago: out of the short window, inside the long one
    rows += [batches.row("page_view", "s:y", "drama2", category="Drama", seconds_ago=7200)]
    batches.run(rows)
    assert batches.list(keys.trending_list("short", "Drama")) == ["drama1"]
    assert batches.list(keys.trending_list("long", "Drama")) == ["drama1", "drama2"]
    assert batches.list(keys.trending_list("long", "Comedy")) == ["comedy1"]
    assert batches.list(keys.trending())[0] == "drama1"
    assert batches.list(keys.popular())[0] == "drama1"
    # each window's buckets, global and per category, live twice the window
    # and a bucket from the batch
    for name, bucket_s, window_s in learn.trending_windows(batches.settings):
        found = [
            batches.r.ttl(key)
            for pattern in (
                keys.trending_window_bucket(name, "*"),
                keys.trending_window_bucket(name, "*", "*"),
            )
            for key in batches.r.scan_iter(pattern)
        ]
        assert len(found) >= 3, name  # global, Drama, Comedy
        assert all(
            2 * (window_s + bucket_s) - 5 <= ttl <= 2 * (window_s + bucket_s) for ttl in found
        )


def test_affinity_is_trending_in_the_visitors_favourite_category(batches):
    r = batches.r
    for product, category in (("d1", "Drama"), ("d2", "Drama"), ("d3", "Drama"), ("c1", "Comedy")):
        r.hset(keys.catalog_product(product), mapping={"category": category})
    rows = [batches.row("page_view", f"s:o{n}", p) for n in range(3) for p in ("d2", "d3")]
    rows += [batches.row("page_view", "s:o9", "c1")]
    batches.run(rows)
    assert sorted(batches.list(keys.trending_list("long", "Drama"))) == ["d2", "d3"]
    # two dramas (one seen), one comedy: their favourite is drama
    batches.run(
        [
            batches.row("page_view", "s:me", "c1", seconds_ago=50),
            batches.row("page_view", "s:me", "d1", seconds_ago=40),
            batches.row("page_view", "s:me", "d2", seconds_ago=30),
        ]
    )
    assert batches.list(keys.visitor_affinity("s:me")) == ["d3"]


def test_carts_and_purchases_count_for_the_strategy_whose_list_was_clicked(batches):
    r = batches.r
    batches.run(
        [
            batches.row("impression", "s:a", "2", seconds_ago=50, strategy="similar"),
            batches.row("click", "s:a", "2", seconds_ago=40, strategy="similar"),
            batches.row("purchase", "s:a", "2", seconds_ago=30),
            batches.row("purchase", "s:a", "9", seconds_ago=30),  # never clicked in a list
            # an anonymous visitor clicks, logs in...
            batches.row("click", "s:b", "3", seconds_ago=40, strategy="trending"),
            batches.row("identify", "u:7", None, previous="s:b", seconds_ago=20),
        ]
    )
    # ...and, a batch later, adds it to the cart and buys it as the user
    batches.run(
        [
            batches.row("add_to_cart", "u:7", "3", seconds_ago=10),
            batches.row("purchase", "u:7", "3", seconds_ago=5),
            # a later click in another list takes the credit
            batches.row("click", "s:a", "2", seconds_ago=4, strategy="trending"),
            batches.row("add_to_cart", "s:a", "2", seconds_ago=3),
        ]
    )
    stats = r.hgetall(keys.bandit_stats())
    assert (stats["similar:purchases"], stats["similar:clicks"]) == ("1", "1")
    assert "similar:carts" not in stats
    assert (stats["trending:carts"], stats["trending:purchases"]) == ("2", "1")
    strategy, ts = r.hget(keys.visitor_clicked("u:7"), "3").split()
    assert strategy == "trending" and int(ts) == batches.now - 40_000
    assert 0 < r.ttl(keys.visitor_clicked("u:7")) <= batches.settings.attribution_window


def test_attribution_keeps_to_its_window_and_the_latest_click_across_a_login(redis_url):
    from reco_plugin.scoring import PipelineSettings

    batches = Batches(redis_url, settings=PipelineSettings(attribution_window=600))
    r = batches.r
    batches.run(
        [
            # the user clicked 4 in "similar" long ago, then, anonymous, in "fbt"
            batches.row("click", "u:8", "4", seconds_ago=3000, strategy="similar"),
            batches.row("click", "s:c", "4", seconds_ago=100, strategy="fbt"),
            batches.row("identify", "u:8", None, previous="s:c", seconds_ago=90),
            batches.row("purchase", "u:8", "4", seconds_ago=80),
            # clicked 5 too long before buying it (window: 600 s)
            batches.row("click", "s:d", "5", seconds_ago=3000, strategy="similar"),
            batches.row("purchase", "s:d", "5", seconds_ago=60),
        ]
    )
    stats = r.hgetall(keys.bandit_stats())
    assert stats.get("fbt:purchases") == "1" and "similar:purchases" not in stats


def test_a_record_read_again_is_left_out_by_its_offset_uncounted(batches):
    first = batches.row("page_view", "s:again", "1")
    batches.run([first, batches.row("page_view", "s:again", "2")])
    before = batches.r.hgetall(keys.pipeline_counters())
    changes = batches.run([first])  # a checkpoint read it again
    assert changes.skipped == {"page_views": 1} and not changes.counts
    assert batches.r.hgetall(keys.pipeline_counters()) == before
    assert batches.r.hget(keys.pipeline_recovery(), "records_skipped") == "1"
    # the offsets never move back
    assert batches.r.hget(keys.pipeline_offsets(), "page_views:0") == str(batches.offset + 1)


def test_a_copy_is_found_within_dedup_records_of_its_partition_whatever_its_age(redis_url):
    batches = Batches(redis_url, PipelineSettings(dedup_records=8))
    now = batches.row("page_view", "s:copy", "1", seconds_ago=60)
    old = batches.row("page_view", "s:copy", "2", seconds_ago=30 * 24 * 3600)
    batches.run([now, old])
    changes = batches.run([batches.again(now), batches.again(old)])
    assert changes.counts == {("page_views", "duplicate"): 2}
    # twelve records later, beyond the window (in whole stretches of 8 / 4): applied
    batches.offset += 12
    changes = batches.run([batches.again(now)])
    assert changes.counts == {("page_views", "applied"): 1}
    # the stretches no later record can look in are gone
    assert batches.r.zrange(keys.seen_index(), 0, -1) == [
        keys.seen_events("page_views", 0, 8),
    ]


def test_a_list_of_a_commit_before_a_restore_cannot_overwrite_the_rebuilt_ones(batches):
    """Redis came back from a snapshot taken at commit 1 while the job had made
    3: a list task of commit 3 still running must not count as current."""
    batches.run([batches.row("page_view", "s:z", "1"), batches.row("page_view", "s:z", "2")])
    batches.r.set(keys.pipeline_commit_seq(), 1)  # restored
    assert state.continue_commits(batches.r, 3) == 3
    batches.run([batches.row("page_view", "s:z", "3")])  # commit 4, after the rewind
    with pytest.raises(state.StaleWriter):
        state.write_lists(
            batches.r, {keys.product_similar("1"): []}, 60, state.Writer(batches.lease.token, 3)
        )
    assert batches.list(keys.product_similar("1"))  # the rebuilt list stands


def test_lists_a_dead_job_owed_are_written_when_the_next_one_starts(batches):
    # a commit, and the job died before it wrote the lists: nothing else comes
    rows = [batches.row("page_view", f"s:v{n}", p) for n in range(3) for p in ("1", "2")]
    batches.run([*rows, batches.row("page_view", "s:w", "1", seconds_ago=10)], lists=False)
    assert state.pending(batches.r) is not None
    assert batches.list(keys.product_similar("1")) == []
    # the next copy of the job takes the lease and starts its query
    processor = batch.BatchProcessor(batches.redis_url, SETTINGS, lease=batches.lease)
    processor.write_owed_at_start()
    assert state.pending(batches.r) is None
    assert batches.list(keys.product_similar("1")) == ["2"]
    assert "2" in batches.personal("s:w")


def owed(r, kind=strategies.SIMILAR):
    return r.zrange(keys.pipeline_owed(kind), 0, -1, withscores=True)


def test_a_batch_writes_at_most_product_lists_per_batch_those_owed_longest_first(redis_url):
    batches = Batches(redis_url, PipelineSettings(product_lists_per_batch=2))
    r = batches.r
    # one visitor pairs 1..5 (commit 1): the lists of 1 and 2 are written
    batches.run(
        [batches.row("page_view", "s:a", p, seconds_ago=60 - n) for n, p in enumerate("12345")]
    )
    assert owed(r) == [("3", 1.0), ("4", 1.0), ("5", 1.0)]
    assert batches.list(keys.product_similar("1")) and batches.list(keys.product_similar("2"))
    assert not any(batches.list(keys.product_similar(p)) for p in "345")
    # commit 2 changes 1 and 9: 3 and 4 are owed longer, so they go first
    batches.run(
        [batches.row("page_view", "s:b", p, seconds_ago=30 - n) for n, p in enumerate("91")]
    )
    assert owed(r) == [("5", 1.0), ("1", 2.0), ("9", 2.0)]
    assert batches.list(keys.product_similar("3")) and batches.list(keys.product_similar("4"))
    # the personal lists are written whatever is owed
    assert batches.personal("s:b")
    # the next batch changes no product's weights (one view, nothing to pair
    # with) and writes the next two owed
    batches.run([batches.row("page_view", "s:d", "8")])
    assert owed(r) == [("9", 2.0)]


def test_an_idle_job_writes_every_list_owed_and_each_is_its_weights_list(redis_url):
    batches = Batches(redis_url, PipelineSettings(product_lists_per_batch=3))
    r = batches.r
    rows = [
        batches.row("page_view", f"s:v{n}", str(p), seconds_ago=600 - 10 * n - p)
        for n in range(6)
        for p in range(n, n + 8)
    ]
    batches.run(rows)
    kinds = (strategies.SIMILAR, strategies.NEXT, strategies.AFTER, strategies.SESSION)
    left = {kind: len(owed(r, kind)) for kind in kinds}
    assert all(n > 3 for n in left.values()), left
    processor = batch.BatchProcessor(batches.redis_url, batches.settings, lease=batches.lease)
    # a batch started: nothing is written
    assert processor.write_owed_lists(busy=lambda: True) == 0
    assert {kind: len(owed(r, kind)) for kind in kinds} == left
    assert processor.write_owed_lists(busy=lambda: False) == sum(left.values())
    assert strategies.product_lists_owed(r) == dict.fromkeys(strategies.STREAMED_PRODUCT_LISTS, 0)
    # each list is the one its pair weights give now
    for kind in kinds:
        target = lists.PRODUCT_LISTS[kind][2]
        found = {str(p): r.get(target(str(p))) for p in range(13)}
        written = {p: v for p, v in found.items() if v is not None}
        assert len(written) >= 10
        products = sorted(written)
        lists.refresh_products(products, redis_url=redis_url, settings=batches.settings, kind=kind)
        assert {p: r.get(target(p)) for p in products} == written


def _backlog(batches, visitors=4):
    """Rows of ``visitors`` visitors, four views each; their ids."""
    rows = [
        batches.row("page_view", f"s:v{n}", str(p), seconds_ago=600 - 10 * n - p)
        for n in range(visitors)
        for p in range(n, n + 4)
    ]
    return rows, [f"s:v{n}" for n in range(visitors)]


def _rewritten(batches, visitors):
    """The visitors' lists as written, and as written again now from the state."""
    wanted = [
        key(v) for v in visitors for key in (keys.visitor_recommendations, keys.visitor_affinity)
    ]
    written = {k: batches.r.get(k) for k in wanted}
    lists.refresh_visitors(visitors, redis_url=batches.redis_url, settings=batches.settings)
    return written, {k: batches.r.get(k) for k in wanted}


def test_a_batch_catching_up_leaves_its_visitors_lists_owed_to_the_first_that_is_not(batches):
    r = batches.r
    rows, visitors = _backlog(batches)
    batches.run(rows[:8], catching_up=True)
    batches.run(rows[8:], catching_up=True)
    assert sorted(state.visitors_owed(r)) == visitors
    assert strategies.visitor_lists_owed(r) == 4 and strategies.lists_owed(r)
    assert not any(batches.personal(v) for v in visitors)
    assert not r.exists(keys.pipeline_pending())  # the batch's record is done with
    # a batch that is not catching up writes its own visitor's and every one owed
    batches.run([batches.row("page_view", "s:w", "1")])
    assert state.visitors_owed(r) == []
    assert all(batches.personal(v) for v in [*visitors, "s:w"])
    written, again = _rewritten(batches, visitors)
    assert written == again


def test_a_batch_catching_up_writes_the_visitors_lists_owed_too_long(batches):
    r = batches.r
    rows, visitors = _backlog(batches)
    waited = strategies.VISITOR_LISTS_DEFERRED_COMMITS
    for n in range(waited):
        batches.run(rows[n : n + 1], catching_up=True)
    # commits 1-5: the first visitor is owed since commit 1, and commit 5 is
    # the fifth since it
    assert state.visitors_owed(r) == ["s:v0", "s:v1"]
    written = [keys.visitor_recommendations(v) for v in ("s:v0", "s:v1")]
    assert not r.exists(*written)
    batches.run(rows[waited : waited + 1], catching_up=True)
    assert state.visitors_owed(r) == []
    assert r.exists(*written) == 2


def test_a_commits_visitor_lists_written_twice_are_the_same_lists(batches):
    """A job killed while writing a commit's lists writes them again when it
    starts: what the commit decided for its visitors' lists holds."""
    r = batches.r
    rows, visitors = _backlog(batches)
    wanted = [keys.visitor_recommendations(v) for v in visitors]
    processor = batch.BatchProcessor(batches.redis_url, batches.settings, lease=batches.lease)
    processor.started_ms = batches.now
    # commit 1 leaves its visitor's lists owed, and so does its copy
    batches.run(rows[:1], catching_up=True, lists=False)
    owing = state.pending(r)
    assert owing["visitor_lists"] == state.OWE
    for _ in range(2):
        processor.write_owed(r)
        assert state.visitors_owed(r) == ["s:v0"] and not r.exists(*wanted)
    for n in range(1, strategies.VISITOR_LISTS_DEFERRED_COMMITS):
        batches.run(rows[n : n + 1], catching_up=True)
    # commit 6 writes them all, twice: the second time as the first
    batches.run(rows[5:6], catching_up=True, lists=False)
    writing = state.pending(r)
    assert writing["visitor_lists"] == state.WRITE
    processor.write_owed(r)
    written = {key: r.get(key) for key in wanted[:2]}
    assert all(written.values()) and state.visitors_owed(r) == []
    r.set(keys.pipeline_pending(), json.dumps(writing))
    processor.write_owed(r)
    assert state.visitors_owed(r) == []
    assert {key: r.get(key) for key in wanted[:2]} == written


def test_an_idle_job_writes_the_visitors_lists_owed(batches):
    r = batches.r
    rows, visitors = _backlog(batches, visitors=7)
    batches.run(rows, catching_up=True)
    processor = batch.BatchProcessor(batches.redis_url, batches.settings, lease=batches.lease)
    processor.write_owed_lists(busy=lambda: True)
    assert len(state.visitors_owed(r)) == 7
    # four at a time: busy after the first round
    rounds = iter([False, True])
    with mock.patch.object(batch, "VISITORS_PER_ROUND", 4):
        processor.write_owed_lists(busy=lambda: next(rounds, True))
    assert state.visitors_owed(r) == visitors[4:]
    processor.write_owed_lists(busy=lambda: False)
    assert state.visitors_owed(r) == [] and not strategies.lists_owed(r)
    written, again = _rewritten(batches, visitors)
    assert all(written.values()) and written == again


def test_a_refused_list_write_leaves_its_products_owed(redis_url):
    batches = Batches(redis_url, PipelineSettings(product_lists_per_batch=1))
    batches.run(
        [batches.row("page_view", "s:a", p, seconds_ago=60 - n) for n, p in enumerate("123")]
    )
    assert [p for p, _ in owed(batches.r)] == ["2", "3"]
    batches.run([batches.row("page_view", "s:c", "7")])  # commit 2
    # a task of commit 1 still running: refused, and 3 stays owed
    with pytest.raises(state.StaleWriter):
        lists.refresh_products(
            ["3"],
            redis_url=redis_url,
            settings=batches.settings,
            writer=state.Writer(batches.lease.token, 1),
        )
    assert [p for p, _ in owed(batches.r)] == ["3"]
    assert batches.list(keys.product_similar("3")) == []


def test_an_idle_writer_overtaken_by_a_commit_is_refused_and_leaves_its_lists_owed(redis_url):
    batches = Batches(redis_url, PipelineSettings(product_lists_per_batch=1))
    batches.run(
        [batches.row("page_view", "s:a", p, seconds_ago=60 - n) for n, p in enumerate("123")]
    )
    assert [p for p, _ in owed(batches.r)] == ["2", "3"]
    processor = batch.BatchProcessor(batches.redis_url, batches.settings, lease=batches.lease)
    committed = []

    def busy():
        # a batch commits (2) after the idle writer read the commit number (1)
        if not committed:
            committed.append(batches.run([batches.row("page_view", "s:c", "3")], lists=False))
        return False

    with pytest.raises(state.StaleWriter):
        processor.write_owed_lists(busy)
    assert committed
    assert owed(batches.r) == [("2", 1.0), ("3", 1.0)]
    assert batches.list(keys.product_similar("2")) == []


def test_products_a_pending_record_of_the_last_version_names_are_owed_and_written(batches):
    rows = [batches.row("page_view", f"s:v{n}", p) for n in range(3) for p in ("1", "2")]
    batches.run(rows, lists=False)
    batches.r.delete(keys.pipeline_owed(strategies.SIMILAR))
    record = {**state.pending(batches.r), "products": ["1", "2"]}
    batches.r.set(keys.pipeline_pending(), json.dumps(record))
    processor = batch.BatchProcessor(batches.redis_url, SETTINGS, lease=batches.lease)
    processor.write_owed_at_start()
    assert batches.list(keys.product_similar("1")) == ["2"]
    assert owed(batches.r) == []


def test_the_ranker_learns_from_the_trials_in_the_fenced_commit(batches):
    """Planted: each visitor goes from a tea's page on to the cheapest tea,
    which the page's similar list holds in a random place."""
    import random

    from reco_plugin import ranker

    r = batches.r
    rng = random.Random(7)
    teas = [f"tea{n}" for n in range(12)]
    for n, product_id in enumerate(teas):
        r.hset(
            keys.catalog_product(product_id),
            mapping={"category": "tea", "price": str(5 + (n * 7) % 12 * 3)},
        )
    cheapest = min(teas, key=lambda p: float(r.hget(keys.catalog_product(p), "price")))
    pages = [p for p in teas if p != cheapest]
    for page in pages:
        others = [p for p in teas if p != page]
        rng.shuffle(others)
        put(r, keys.product_similar(page), others)
    for round_ in range(8):
        visitors = [f"s:r{round_}v{n}" for n in range(40)]
        rows = [
            batches.row("page_view", v, pages[n % len(pages)], seconds_ago=50)
            for n, v in enumerate(visitors)
        ]
        rows += [batches.row("page_view", v, cheapest, seconds_ago=40) for v in visitors]
        if round_ == 7:
            # the same batch scored twice from the same state (a job killed
            # before its commit, run again) teaches the same examples
            learner = ranker.Learner.from_dict(json.loads(r.get(keys.ranker_model())))
            first = batches.score(rows, batches.now)
        changes = batches.run(rows, lists=False)
    assert changes.examples == first.examples and len(first.examples) == 40 * 11
    learner.learn(first.examples)
    served = json.loads(r.get(keys.ranker_weights()))
    assert served["weights"] == learner.weights()
    assert served["examples"] == 8 * 40 * 11 == learner.examples
    assert r.get(keys.ranker_version())
    weights = dict(zip(served["features"], served["weights"], strict=True))
    assert max(weights, key=lambda name: weights[name]) == "price:rank_in_category"
    # measured on each batch before learning it: the model got better
    metrics = [json.loads(entry) for entry in r.lrange(keys.ranker_metrics(), 0, -1)]
    assert len(metrics) == 8 and metrics[0]["examples"] == 440
    assert metrics[-1]["auc"] == 0.5 and metrics[0]["auc"] > 0.95
    assert metrics[0]["log_loss"] < metrics[-1]["log_loss"]


def views(batches, visitor, *steps):
    """A visitor's page views: (product, seconds ago) each."""
    return [batches.row("page_view", visitor, p, seconds_ago=ago) for p, ago in steps]


def test_where_visitors_went_next_is_the_next_list_of_the_product(batches):
    rows = []
    for n in range(3):
        rows += views(batches, f"s:n{n}", ("shoes", 30), ("socks", 20))
    rows += views(batches, "s:m", ("shoes", 30), ("laces", 20))
    batches.run(rows)
    # directed: from shoes to socks (3 visitors) before laces (1); nothing back
    assert batches.list(keys.product_next("shoes")) == ["socks", "laces"]
    assert batches.list(keys.product_next("socks")) == []
    # co-visitation goes both ways
    assert "shoes" in batches.list(keys.product_similar("socks"))


def test_right_after_and_within_minutes_are_the_after_and_session_lists(batches):
    rows = []
    for n in range(3):
        # "hat" ten minutes on: within next's steps, beyond session_window
        steps = (("shoes", 900), ("laces", 880), ("socks", 860), ("hat", 260))
        rows += views(batches, f"s:a{n}", *steps)
    batches.run(rows)
    assert sorted(batches.list(keys.product_next("shoes"))) == ["hat", "laces", "socks"]
    # after: the very next item only
    assert batches.list(keys.product_after("shoes")) == ["laces"]
    assert batches.list(keys.product_after("socks")) == ["hat"]
    # session: within session_window (5 minutes), before or after
    assert sorted(batches.list(keys.product_session("laces"))) == ["shoes", "socks"]
    assert "hat" not in batches.list(keys.product_session("socks"))
    assert batches.list(keys.product_session("hat")) == []


def test_lists_written_without_a_writer_hold_their_json_and_ttl(redis_url):
    """The retraining's writes (no lease): every list, past one call's keys."""
    r = state.connect(redis_url)
    lists = {
        f"t:retrained:{n}": [{"product_id": f"p{n}", "score": 0.5}] * (n % 3)
        for n in range(state.CHUNK + 7)
    }
    state.write_lists(r, lists, 600)
    assert {key: json.loads(r.get(key)) for key in lists} == lists
    assert {r.ttl(key) for key in lists} <= {599, 600}


def test_the_lists_a_batch_judges_on_are_decoded_once_per_value(r, monkeypatch):
    """As ``ranker.scored_ids`` reads each list, whatever its value (missing, a
    product twice, a score that is not a number, NaN as Python's json writes
    it); a list rewritten is read anew, and a value read again is not decoded
    again."""
    import math

    from reco_plugin import ranker

    values = {
        "a": json.dumps([{"product_id": "1", "score": 0.5}, {"product_id": 2, "score": 0.25}]),
        "twice": json.dumps(
            [{"product_id": "1", "score": 1}, {"product_id": "2"}, {"product_id": "1", "score": 3}]
        ),
        "damaged": json.dumps([{"product_id": "1", "score": "high"}, {"score": 1.0}]),
        "nan": json.dumps([{"product_id": "1", "score": float("nan")}]),
    }
    for key, value in values.items():
        r.set(key, value)
    wanted = ["a", "missing", "twice", "damaged", "a"]

    def decoded(keys_):
        return [ranker.scored_ids(strategies.Ranked.of(items)) for items in state.lists(r, keys_)]

    monkeypatch.setattr(state, "_scored", [{}, {}])
    monkeypatch.setattr(state, "_scored_size", 0)
    expected = decoded(wanted)
    assert state.scored_lists(r, wanted) == expected
    assert expected[0] == [("1", 0.5), ("2", 0.25)] and expected[1] == []
    assert expected[2] == [("1", 3.0), ("2", 0.0), ("1", 3.0)]
    assert expected[3] == [("1", 0.0)]
    [(product_id, score)] = state.scored_lists(r, ["nan"])[0]
    assert product_id == "1" and math.isnan(score)

    loads = []
    monkeypatch.setattr(state, "_loads", lambda raw: loads.append(raw) or json.loads(raw))
    assert state.scored_lists(r, wanted) == expected and not loads  # read again: kept
    r.set("a", json.dumps([{"product_id": "9", "score": 1.0}]))  # rewritten
    assert state.scored_lists(r, ["a"]) == [[("9", 1.0)]] and len(loads) == 1

    # past SCORED_KEPT characters, the values read become the old generation
    # (still kept), and the ones read in neither are forgotten
    monkeypatch.setattr(state, "SCORED_KEPT", 100)
    monkeypatch.setattr(state, "_scored", [{}, {}])
    monkeypatch.setattr(state, "_scored_size", 0)
    for n in range(4):
        r.set(f"more{n}", json.dumps([{"product_id": str(n), "score": 1.0}]))
    assert state.scored_lists(r, ["more0", "more1", "more2", "more3"]) == [
        [(str(n), 1.0)] for n in range(4)
    ]
    new, old = state._scored
    assert not new and set(old) == {r.get(f"more{n}") for n in range(4)}
    loads.clear()
    assert state.scored_lists(r, ["more0", "twice"]) == [[("0", 1.0)], expected[2]]
    assert loads == [values["twice"]]  # "twice" was forgotten, "more0" kept


def test_a_batch_judged_on_lists_decoded_before_learns_the_same(batches, monkeypatch):
    """The same rows scored from the same state, the lists decoded anew, then
    kept from that: the same trials, rewards and ranker examples."""
    r = batches.r
    for page in ("1", "2", "3"):
        put(r, keys.product_similar(page), [p for p in "123456" if p != page])
    for round_ in range(2):
        batches.run(
            [
                batches.row("page_view", f"s:v{round_}-{n}", p, seconds_ago=50 - i)
                for n in range(20)
                for i, p in enumerate(("1", "4", "2", "5"))
            ]
        )
    rows = [
        batches.row("page_view", f"s:w{n}", p, seconds_ago=30 - i)
        for n in range(20)
        for i, p in enumerate(("2", "4", "3", "6"))
    ]

    def scored():
        changes = batches.score(rows, batches.now)
        changes.seconds = 0
        return changes

    from reco_plugin import ranker

    monkeypatch.setattr(state, "_scored", [{}, {}])
    monkeypatch.setattr(state, "_scored_size", 0)
    cold = scored()
    assert state._scored[0]  # the judged lists, kept
    decoded = []
    monkeypatch.setattr(ranker, "scored_ids", lambda items: decoded.append(items) or [])
    warm = scored()
    assert not decoded  # every list judged on was kept
    assert len(cold.examples) > 0 and sum(t for _, t in cold.rewards.values()) > 0
    assert warm == cold
