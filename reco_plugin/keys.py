"""Redis key schema, shared by the Django app (readers) and the Spark jobs (writers).

Django-free. Every key the product reads or writes is built here; nothing else
formats a key string. All keys start with ``PREFIX`` so an operator can find,
count or flush them (``redis-cli --scan --pattern 'reco:v1:*'``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket

DEFAULT_PREFIX = "reco:v1"
PREFIX = DEFAULT_PREFIX


def use_prefix(prefix: str) -> None:
    """Put every key, the update channel and the websocket groups of this
    process under ``prefix`` (two shops, or a replay, on one Redis)."""
    global PREFIX
    if not prefix or any(c.isspace() for c in prefix):
        raise ValueError(f"a key prefix is a non-empty word, not {prefix!r}")
    PREFIX = prefix


# Recommendation lists are JSON arrays of {"product_id", "score"}, best first,
# written whole by the pipeline. Their TTLs are pipeline settings
# (``scoring.PipelineSettings``): a list lives as long as the state it is made of.


def visitor_recommendations(visitor_id: str) -> str:
    """JSON list: the visitor's personal top list."""
    return f"{PREFIX}:visitor:{visitor_id}:recs"


def visitor_recent(visitor_id: str) -> str:
    """JSON list of [product_id, ts_ms, weight]: the visitor's most recent items, newest first."""
    return f"{PREFIX}:visitor:{visitor_id}:recent"


def product_similar(product_id: str) -> str:
    """JSON list: items related to a product (co-visitation)."""
    return f"{PREFIX}:product:{product_id}:similar"


def visitor_seen(visitor_id: str) -> str:
    """Sorted set: product -> ts_ms, what the visitor interacted with (bounded)
    and is not recommended again; repeatable products are never in it."""
    return f"{PREFIX}:visitor:{visitor_id}:seen"


def visitor_affinity(visitor_id: str) -> str:
    """JSON list: trending (long window) in the visitor's favourite category."""
    return f"{PREFIX}:visitor:{visitor_id}:affinity"


def visitor_bought(visitor_id: str) -> str:
    """Sorted set: product -> ts_ms, the visitor's latest purchases (baskets)."""
    return f"{PREFIX}:visitor:{visitor_id}:bought"


# The environment variable the streaming job (driver and executors) finds the
# digests' secret in (``reco_stream`` sets it from the shop's SECRET_KEY).
FORGET_SECRET_ENV = "RECO_FORGET_SECRET"


def visitor_digest(visitor_id: str, secret: str = "") -> str:
    """How a forgotten visitor is named where it lasts (tombstones, the forget
    records in Kafka): an HMAC of the id under the shop's ``secret``."""
    return hmac.new(secret.encode(), visitor_id.encode(), hashlib.sha256).hexdigest()


def visitor_forgotten(digest: str) -> str:
    """String, TTL the pipeline's horizon: when (epoch ms) the visitor of this
    digest (``visitor_digest``) was forgotten; the pipeline ignores their
    events up to then."""
    return f"{PREFIX}:forgotten:{digest}"


def visitor_of(key: str) -> str | None:
    """The visitor whose key (``visitor_keys``) this is; None for another key."""
    head = f"{PREFIX}:visitor:"
    if not key.startswith(head):
        return None
    visitor, _, _ = key[len(head) :].rpartition(":")
    return visitor or None


def pipeline_forgotten_offset() -> str:
    """String: the next offset of the forget records' topic whose tombstones
    Redis holds (the job reads the rest before every batch)."""
    return f"{PREFIX}:pipeline:forgotten-offset"


def visitor_clicked(visitor_id: str) -> str:
    """Hash: product -> ``"<strategy> <ts_ms>"`` of the recommendation the
    visitor last clicked it in (TTL ``attribution_window``), to attribute a
    later add-to-cart or purchase."""
    return f"{PREFIX}:visitor:{visitor_id}:clicked"


def visitor_keys(visitor_id: str) -> list[str]:
    """Every key holding something of one visitor (``reco_forget`` deletes them)."""
    return [
        visitor_recommendations(visitor_id),
        visitor_recent(visitor_id),
        visitor_seen(visitor_id),
        visitor_affinity(visitor_id),
        visitor_bought(visitor_id),
        visitor_clicked(visitor_id),
    ]


def product_next(product_id: str) -> str:
    """JSON list: what visitors went on to from a product (the ``next`` strategy)."""
    return f"{PREFIX}:product:{product_id}:next"


def product_followed_by(product_id: str) -> str:
    """Sorted set: other product -> accumulated weight of visits to it right
    after this product (directed)."""
    return f"{PREFIX}:product:{product_id}:followed-by"


def next_clock() -> str:
    """Hash: product -> event time (ms) its followed-by weights were last decayed to."""
    return f"{PREFIX}:product:next-clock"


def product_after(product_id: str) -> str:
    """JSON list: what visitors viewed right after a product (the ``after`` strategy)."""
    return f"{PREFIX}:product:{product_id}:after"


def product_then(product_id: str) -> str:
    """Sorted set: other product -> accumulated weight of visits to it as the
    very next item after this product (directed)."""
    return f"{PREFIX}:product:{product_id}:then"


def after_clock() -> str:
    """Hash: product -> event time (ms) its ``then`` weights were last decayed to."""
    return f"{PREFIX}:product:after-clock"


def product_session(product_id: str) -> str:
    """JSON list: what visitors viewed within minutes of a product (the
    ``session`` strategy)."""
    return f"{PREFIX}:product:{product_id}:session"


def product_session_with(product_id: str) -> str:
    """Sorted set: other product -> accumulated weight of visits to both at
    most ``session_window`` apart."""
    return f"{PREFIX}:product:{product_id}:session-with"


def session_clock() -> str:
    """Hash: product -> event time (ms) its session-with weights were last decayed to."""
    return f"{PREFIX}:product:session-clock"


def product_fbt(product_id: str) -> str:
    """JSON list: items frequently bought together with a product."""
    return f"{PREFIX}:product:{product_id}:fbt"


def product_bought_with(product_id: str) -> str:
    """Sorted set: other product -> accumulated weight of baskets holding both."""
    return f"{PREFIX}:product:{product_id}:bought-with"


def product_retrained(product_id: str) -> str:
    """JSON list: a product's neighbours from the batch retraining job."""
    return f"{PREFIX}:product:{product_id}:retrained"


def product_content(product_id: str) -> str:
    """JSON list: products whose catalog text (title, description) is like a product's."""
    return f"{PREFIX}:product:{product_id}:content"


def purchases() -> str:
    """Sorted set: product -> accumulated purchase weight (fading like popularity)."""
    return f"{PREFIX}:purchases"


def fbt_clock() -> str:
    """Hash: product -> event time (ms) its bought-with weights were last decayed to."""
    return f"{PREFIX}:product:fbt-clock"


def popular() -> str:
    """JSON list: the most popular items (the popularity sorted set's top)."""
    return f"{PREFIX}:popular"


def trending_window_bucket(window: str, bucket_start_s: int, category: str = "") -> str:
    """Sorted set: product -> weight of interactions in one event-time bucket of
    a trending window (``short`` or ``long``), globally or in one category."""
    if category:
        return f"{PREFIX}:trending:{window}:cat:{category}:bucket:{bucket_start_s}"
    return f"{PREFIX}:trending:{window}:bucket:{bucket_start_s}"


def trending_list(window: str, category: str = "") -> str:
    """JSON list: trending over a window, globally or in one category. The
    global short-window list is :func:`trending`."""
    if not category and window == "short":
        return trending()
    if category:
        return f"{PREFIX}:trending:{window}:cat:{category}"
    return f"{PREFIX}:trending:{window}"


def bandit() -> str:
    """Hash: strategy -> "alpha beta", the blend's discounted Beta beliefs."""
    return f"{PREFIX}:bandit"


def bandit_policy() -> str:
    """String (JSON): the serving policy drawn from the beliefs (``strategies.policy``)."""
    return f"{PREFIX}:bandit:policy"


def bandit_policy_version() -> str:
    """String: the id of the batch that wrote the policy (readers fetch the
    policy again only when it changes)."""
    return f"{PREFIX}:bandit:policy-version"


def bandit_stats() -> str:
    """Hash: ``strategy:trials`` / ``strategy:successes`` / ``strategy:clicks`` /
    ``strategy:impressions`` / ``strategy:carts`` / ``strategy:purchases`` (of
    products clicked in its lists), all-time and undiscounted, for reading."""
    return f"{PREFIX}:bandit:stats"


def ranker_model() -> str:
    """String (JSON): the ranker's learner, FTRL's per-feature state
    (``ranker.Learner``); written only in the job's fenced commit."""
    return f"{PREFIX}:ranker:model"


def ranker_weights() -> str:
    """String (JSON): the ranker as served: ``features``, ``weights``,
    ``examples`` learnt from and ``ranking`` (the job's setting: ``ranker``
    or ``blend``)."""
    return f"{PREFIX}:ranker:weights"


def ranker_version() -> str:
    """String: the digest of the served weights (readers fetch them again
    only when it changes)."""
    return f"{PREFIX}:ranker:version"


def ranker_metrics() -> str:
    """List (JSON entries, newest first, the last 500): per commit with
    examples, the batch's event-time ``clock``, its ``examples`` and the
    model's ``log_loss`` and ``auc`` on them before learning them."""
    return f"{PREFIX}:ranker:metrics"


def catalog_unavailable() -> str:
    """Set: products never to recommend (out of stock or blocked), from the catalog sync."""
    return f"{PREFIX}:catalog:unavailable"


def catalog_repeatable() -> str:
    """Set: products that may be recommended again after a visitor bought them."""
    return f"{PREFIX}:catalog:repeatable"


def product_covisits(product_id: str) -> str:
    """Sorted set: other product -> accumulated co-visitation weight."""
    return f"{PREFIX}:product:{product_id}:covisits"


def popularity() -> str:
    """Sorted set: product -> accumulated interaction weight (all time)."""
    return f"{PREFIX}:popularity"


def trending() -> str:
    """JSON list: the trending items over the trending window, best first."""
    return f"{PREFIX}:trending"


def catalog_product(product_id: str) -> str:
    """Hash: a product's display fields (title, url, price, category, image, in_stock)."""
    return f"{PREFIX}:catalog:{product_id}"


def catalog_version() -> str:
    """Counter: raised by every catalog sync; serving keeps display fields read
    under the current value (a product id cannot name this key)."""
    return f"{PREFIX}:catalog-version"


def catalog_index() -> str:
    """Set: the ids of the products synced into the catalog hashes."""
    return f"{PREFIX}:catalog:ids"


def product_clock() -> str:
    """Hash: product -> event time (ms) its co-visitation weights were last decayed to."""
    return f"{PREFIX}:product:clock"


def pipeline_offsets() -> str:
    """Hash: ``topic:partition`` -> next Kafka offset the pipeline has fully processed."""
    return f"{PREFIX}:pipeline:offsets"


def pipeline_topic_ids() -> str:
    """Hash: topic -> its id (Kafka's topic UUID): the life of the topic the
    offsets in ``pipeline_offsets`` belong to."""
    return f"{PREFIX}:pipeline:topic-ids"


def pipeline_committed_batch() -> str:
    """Hash: query id -> its last micro-batch whose state changes were committed
    (for operators and the lists' order; the offsets decide what is applied)."""
    return f"{PREFIX}:pipeline:committed-batch"


def pipeline_commit_seq() -> str:
    """String: how many batches have committed; lists carry the number of the
    commit they derive from, and a list of an older commit never overwrites a newer."""
    return f"{PREFIX}:pipeline:commit-seq"


def pipeline_recovery() -> str:
    """Hash: ``rewinds``, ``records_reapplied``, ``records_skipped`` (read again,
    already applied), and the JSON of the ``last_rewind`` and ``last_expired``."""
    return f"{PREFIX}:pipeline:recovery"


def pipeline_lease() -> str:
    """String, TTL ~15 s: the token of the one streaming job allowed to write."""
    return f"{PREFIX}:pipeline:lease"


def pipeline_lease_epoch() -> str:
    """String: how many times the lease has been taken; a commit watches it
    (renewing the lease does not change it, a new owner does)."""
    return f"{PREFIX}:pipeline:lease-epoch"


def pipeline_lease_info() -> str:
    """String (JSON): the lease's owner and since when it holds it."""
    return f"{PREFIX}:pipeline:lease-info"


def pipeline_standby() -> str:
    """Hash: token -> JSON of a copy of the job that waits for the lease."""
    return f"{PREFIX}:pipeline:standby"


def pipeline_counters() -> str:
    """Hash: ``topic:status`` -> records counted (statuses in ``scoring.STATUSES``, and ``read``)."""
    return f"{PREFIX}:pipeline:counters"


def pipeline_clock() -> str:
    """String: the pipeline's event-time clock (ms), the newest applied event time."""
    return f"{PREFIX}:pipeline:clock"


def pipeline_history() -> str:
    """List (JSON, newest first, capped): per batch when it finished, how long it
    took, its rows, the records applied per topic and its freshness; the
    admin's dashboard draws it."""
    return f"{PREFIX}:pipeline:history"


def alerted_at() -> str:
    """String, TTL ``status.ALERT_EVERY_SECONDS``: when the current incident was
    last raised (absent: none is, or it may be raised again)."""
    return f"{PREFIX}:stats:alerted-at"


def stats_history() -> str:
    """List (JSON, newest first, capped): a sample every ``reco_plugin.roll_up``
    of the Kafka lag, CTR by strategy and the bandit's beliefs; the dashboard draws it."""
    return f"{PREFIX}:stats:history"


def pipeline_last_batch() -> str:
    """Hash: id, time, duration, rows and per-step timings of the last micro-batch."""
    return f"{PREFIX}:pipeline:last-batch"


def pipeline_batch_time() -> str:
    """String ``query:batch:now_ms``: the wall clock a batch is judged by, kept so
    that a run of the batch again judges too old / future / duplicate alike."""
    return f"{PREFIX}:pipeline:batch-time"


def pipeline_pending() -> str:
    """String (JSON): the lists the last committed batch must refresh (redone after a crash)."""
    return f"{PREFIX}:pipeline:pending"


def pipeline_owed(kind: str) -> str:
    """Sorted set: product -> the number of the commit that first changed its
    pair weights of ``kind`` (similar, fbt, next, after, session) since its
    list of that kind was last written; the oldest are written first."""
    return f"{PREFIX}:pipeline:owed:{kind}"


def pipeline_visitors_owed() -> str:
    """Sorted set: visitor -> the commit of the batch catching up that first
    left their personal lists unwritten; written once the job has caught up,
    or when the oldest has waited ``strategies.VISITOR_LISTS_DEFERRED_COMMITS``."""
    return f"{PREFIX}:pipeline:owed-visitors"


def pipeline_scratch(name: str) -> str:
    """Sorted set used inside one commit and deleted by it."""
    return f"{PREFIX}:pipeline:scratch:{name}"


def seen_events(topic: str, partition: int, bucket: int) -> str:
    """Set: ids of the events applied from one stretch of a partition's offsets
    (``bucket`` = offset // the stretch's length), for de-duplication."""
    return f"{PREFIX}:pipeline:seen:{topic}:{partition}:{bucket}"


def seen_index() -> str:
    """Sorted set: the de-duplication sets that exist (``seen_events``), scored
    by their stretch of offsets."""
    return f"{PREFIX}:pipeline:seen:index"


def pipeline_heartbeat() -> str:
    """String (JSON, :data:`HEARTBEAT_TTL` s): the streaming job is up; its
    last progress. Written about every second: its remaining TTL says how long
    ago, by Redis's clock."""
    return f"{PREFIX}:pipeline:heartbeat"


# seconds the job's heartbeat outlives its last write
HEARTBEAT_TTL = 15


def process_space() -> str:
    """Where a process id names one process: this host, the boot of its
    kernel and the PID namespace ("" where that cannot be read). The job's
    heartbeat carries it, so ``reco_status`` run where it is the same can
    tell whether the job's process still exists."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return (
                f"{socket.gethostname()}/{boot.read().strip()}/{os.readlink('/proc/self/ns/pid')}"
            )
    except OSError:
        return ""


def updates_channel(db: int = 0) -> str:
    """Pub/sub channel: the pipeline publishes a visitor id whenever that visitor's list changes.

    Pub/sub is shared by every database of a Redis server: a shop whose lists
    are in database ``db`` (not 0) has the database in its channel's name, so
    two shops on two databases never hear each other's notices."""
    return f"{PREFIX}:updates" if not db else f"{PREFIX}:db{db}:updates"


def db_of(client) -> int:  # type: ignore[no-untyped-def]
    """The database number a redis-py client (sync or asyncio) talks to."""
    return int(client.connection_pool.connection_kwargs.get("db") or 0)


def tuning() -> str:
    """String (JSON): the active tuning version staff saved in the admin:
    ``{"version", "pipeline": {...}, "strategies": {...}}``; the job applies
    ``pipeline`` from its next micro-batch, the serving path ``strategies``."""
    return f"{PREFIX}:tuning"


def experiment() -> str:
    """String (JSON): the experiment staff scheduled (``reco_plugin.experiments``)."""
    return f"{PREFIX}:experiment"


def experiment_counts(experiment_id: int) -> str:
    """Hash: ``<arm>:impressions`` / ``<arm>:clicks`` -> count, written by the job."""
    return f"{PREFIX}:experiment:{experiment_id}:counts"


def experiment_visitors(experiment_id: int, arm: int, name: str) -> str:
    """Set: the visitors of an arm who were ``exposed`` / ``carted`` / ``purchased``."""
    return f"{PREFIX}:experiment:{experiment_id}:{arm}:{name}"


def rules() -> str:
    """String (JSON list): the enabled merchandising rules (``reco_plugin.rules``),
    published by the admin; the serving path reads it with every list, the job
    keeps global blocks out of what it writes."""
    return f"{PREFIX}:rules"


def live_group(db: int = 0) -> str:
    """Channels group every ASGI process serving websockets joins: the relay
    forwards each update notice to it once, whatever the number of visitors
    named (see ``reco_plugin.live``). Per key prefix and database, as the
    update channel is."""
    digest = hashlib.sha256(f"{PREFIX}|{db}".encode()).hexdigest()[:40]
    return f"reco.live.{digest}"


def visitor_group(visitor_id: str) -> str:
    """Channels group name for a visitor's websockets.

    Group names allow only ASCII letters, digits, ``-_.`` and fewer than 100
    characters, and a visitor id should not leak into the channel layer, so
    the id is hashed.
    """
    digest = hashlib.sha256(f"{PREFIX}|{visitor_id}".encode()).hexdigest()[:40]
    return f"reco.visitor.{digest}"


def warmup_done() -> str:
    """String: set once a history warm-up has been fully processed (its summary as JSON)."""
    return f"{PREFIX}:warmup:done"


def producer_stats() -> str:
    """Hash: events delivered, failed and dropped by the shop's producers, summed over processes."""
    return f"{PREFIX}:producer:stats"


def retrain_last() -> str:
    """String (JSON): when the batch retraining job last ran, and what it wrote."""
    return f"{PREFIX}:retrain:last"


def retrain_running() -> str:
    """String (JSON, TTL): the retraining job running now (pid, start)."""
    return f"{PREFIX}:retrain:running"


def retrain_failed() -> str:
    """String (JSON): when the retraining job last failed, and why."""
    return f"{PREFIX}:retrain:failed"
