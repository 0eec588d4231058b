"""Scoring and pipeline parameters shared by the Spark jobs and the Django app. Django-free.

``PipelineSettings`` is every tunable of the streaming job with its default. The
shop sets them in ``RECO_PLUGIN["PIPELINE"]`` (a partial dict: unnamed keys keep
their defaults); the job takes the same dict as ``--config`` JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from . import schema

# How much one event of each type says about interest in the product.
EVENT_WEIGHTS: dict[str, float] = {
    schema.PAGE_VIEW: 1.0,
    schema.CLICK: 1.5,
    schema.ADD_TO_CART: 3.0,
    schema.REMOVE_FROM_CART: 0.0,
    schema.PURCHASE: 5.0,
    schema.IMPRESSION: 0.0,
}

# A visitor's items are paired with at most this many of their other items...
RECENT_ITEMS = 20
# ...seen at most this long before or after (event time).
COVISIT_WINDOW_SECONDS = 30 * 60
# Trending: interactions in the last TRENDING_WINDOW of event time, in buckets
# (a window sliding by one bucket), and over a longer window.
TRENDING_BUCKET_SECONDS = 60
TRENDING_WINDOW_SECONDS = 5 * 60
TRENDING_LONG_BUCKET_SECONDS = 3600
TRENDING_LONG_WINDOW_SECONDS = 24 * 3600
# Length of the lists the pipeline writes.
LIST_LENGTH = 50
# Recency decay of a visitor's items when building their personal list:
# the n-th most recent item counts RECENCY_DECAY ** n.
RECENCY_DECAY = 0.85

# Outcome of one Kafka record in the pipeline; each is counted per topic.
STATUS_APPLIED = "applied"
STATUS_DUPLICATE = "duplicate"
STATUS_MALFORMED = "malformed"
STATUS_TOO_OLD = "too_old"
STATUS_FUTURE = "future"
# an event of a visitor who was forgotten after it happened (reco_forget)
STATUS_FORGOTTEN = "forgotten"
# deleted by Kafka's retention before the job read it: counted, never ``read``
STATUS_EXPIRED = "expired"
STATUSES: tuple[str, ...] = (
    STATUS_APPLIED,
    STATUS_DUPLICATE,
    STATUS_MALFORMED,
    STATUS_TOO_OLD,
    STATUS_FUTURE,
    STATUS_FORGOTTEN,
    STATUS_EXPIRED,
)


# How a list is ordered (PipelineSettings.ranking).
RANKER = "ranker"
BLEND = "blend"
RANKINGS: tuple[str, ...] = (RANKER, BLEND)

# The largest weight an event type may have (a purchase weighs 5 by default):
# weights are summed as integers of 1e-9, and a weight beyond reason drowns
# every other signal.
MAX_EVENT_WEIGHT = 100.0


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """Every tunable of the streaming job. Times are seconds unless named otherwise."""

    # event type -> weight; a partial mapping keeps the other types' defaults
    event_weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: dict(EVENT_WEIGHTS)
    )
    # co-visitation: each event pairs with at most this many of the visitor's
    # other items, seen at most covisit_window apart
    recent_items: int = RECENT_ITEMS
    # what visitors went on to (the ``next`` strategy): each event follows
    # this many of the visitor's items before it (within covisit_window)
    next_steps: int = 3
    # ...and those steps fade with this half-life (where visitors go from a
    # product changes slowly: measured on ML-100k, a 30-day memory lost 8% of
    # the ranker's hits against a year's)
    next_half_life: int = 90 * 24 * 3600
    # what visitors viewed within minutes of a product, before or after (the
    # ``session`` strategy): pairs at most this far apart, fading like
    # ``next``; the ``after`` strategy (the very next item) fades so too
    session_window: int = 300
    covisit_window: int = COVISIT_WINDOW_SECONDS
    # co-visitation and popularity fade with this half-life (event time)
    half_life: int = 7 * 24 * 3600
    # neighbours kept per product (the state is bounded to this many)
    neighbours_kept: int = 100
    # length of the similar, personal and trending lists written
    list_length: int = LIST_LENGTH
    recency_decay: float = RECENCY_DECAY
    # trending, globally and per category: a short window and a long one, each
    # sliding by one bucket
    trending_bucket: int = TRENDING_BUCKET_SECONDS
    trending_window: int = TRENDING_WINDOW_SECONDS
    trending_long_bucket: int = TRENDING_LONG_BUCKET_SECONDS
    trending_long_window: int = TRENDING_LONG_WINDOW_SECONDS
    # what a visitor interacted with (their latest seen_kept items) is not
    # recommended to them again; with exclude_seen off, only what they bought.
    # Products the catalog marks repeatable are always allowed.
    exclude_seen: bool = True
    seen_kept: int = 500
    # purchases of a visitor at most this far apart are one basket (frequently
    # bought together)
    basket_window: int = 3600
    # the blend's bandit: chance of a uniformly random strategy for a slot (the
    # next-item trials judge every strategy whatever was shown, so little is
    # needed), the discount of the evidence per trial occasion (0.999: about
    # the last 1000 count), and the most trials taken from one visitor's
    # events in a batch
    exploration: float = 0.05
    bandit_discount: float = 0.999
    # how a list is ordered: "ranker" (the candidates of every strategy scored
    # by the model learnt online, reco_plugin.ranker; the blend until it has
    # learnt from ranker.WARM_EXAMPLES examples) or "blend" (slot by slot by
    # the bandit)
    ranking: str = "ranker"
    trials_per_visitor: int = 10
    # where the raw events are appended (Parquet, partitioned by date) for the
    # batch retraining job; None: no event lake
    lake_path: str | None = None
    # events older than this (against the wall clock) are counted as too_old, not applied
    horizon: int = 90 * 24 * 3600
    # events stamped more than this ahead of the wall clock are counted as future
    future_tolerance: int = 5 * 60
    # an event id applied at most this many records earlier in the same
    # partition (a copy has the original's key, so its partition) is a
    # duplicate: a beacon sent twice, a producer's copy. Memory: ~93 bytes an
    # id, at most this many ids per partition (docs/production.md)
    dedup_records: int = 100_000
    # product state (neighbours, similar list) lives this long after its last event
    product_ttl: int = 30 * 24 * 3600
    # a visitor's recent items and personal list live this long after their last event
    visitor_ttl: int = 2 * 24 * 3600
    # an add-to-cart or purchase of a product the visitor clicked in a
    # recommendation within this long counts for the strategy that listed it
    attribution_window: int = 7 * 24 * 3600
    # batches of at most this many records are scored in one pass on the driver;
    # larger (catch-up) batches are spread over the executors
    driver_batch_rows: int = 5000
    # the product lists of each kind (similar, next...) a batch writes at most:
    # those whose pair weights changed longest ago first; the rest stay owed
    # (keys.pipeline_owed) for the next batches, or an idle job
    product_lists_per_batch: int = 100
    max_offsets_per_trigger: int = 20000
    # None: the number of cores of a local master
    shuffle_partitions: int | None = None
    # the job's lease in Redis lasts this long unless renewed (every second):
    # a second copy of the job takes over this long after the first dies
    lease_ttl: int = 15
    # the Redis key prefix (keys.use_prefix) the job reads and writes under;
    # set from the shop's KEY_PREFIX by the launcher, or by a replay
    key_prefix: str = "reco:v1"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> PipelineSettings:
        """Defaults overridden by ``values``; unknown keys are an error."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if "dedup_ttl" in unknown:
            raise ValueError(
                "dedup_ttl is replaced by dedup_records: duplicates are found within a number "
                "of records of their partition, not a time"
            )
        if unknown:
            raise ValueError(f"unknown pipeline settings: {', '.join(unknown)}")
        if "event_weights" in values:
            values["event_weights"] = _weights(EVENT_WEIGHTS, values["event_weights"])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for event_type, weight in self.event_weights.items():
            if not 0 <= weight <= MAX_EVENT_WEIGHT:
                raise ValueError(
                    f"event_weights: {event_type} must be between 0 and {MAX_EVENT_WEIGHT:g}"
                )
        for name in (
            "recent_items",
            "next_steps",
            "covisit_window",
            "half_life",
            "next_half_life",
            "session_window",
            "neighbours_kept",
            "list_length",
            "trending_bucket",
            "trending_window",
            "trending_long_bucket",
            "trending_long_window",
            "seen_kept",
            "basket_window",
            "trials_per_visitor",
            "horizon",
            "dedup_records",
            "product_ttl",
            "visitor_ttl",
            "attribution_window",
            "driver_batch_rows",
            "product_lists_per_batch",
            "max_offsets_per_trigger",
            "lease_ttl",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.trending_window < self.trending_bucket:
            raise ValueError(
                f"trending_window must be at least one trending_bucket ({self.trending_bucket} s)"
            )
        if self.trending_long_window < self.trending_long_bucket:
            raise ValueError(
                "trending_long_window must be at least one trending_long_bucket "
                f"({self.trending_long_bucket} s)"
            )
        if not 0 <= self.exploration <= 1:
            raise ValueError("exploration must be in [0, 1]")
        if not 0 < self.bandit_discount <= 1:
            raise ValueError("bandit_discount must be in (0, 1]")
        if self.ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {', '.join(RANKINGS)}")
        # a batch's weights are scaled by 2 ** (age / half_life), ages up to two horizons
        for name in ("half_life", "next_half_life"):
            if (2 * self.horizon + self.future_tolerance) / getattr(self, name) > 900:
                least = -(-(2 * self.horizon + self.future_tolerance) // 900)
                raise ValueError(
                    f"{name} must be at least {least} seconds "
                    "(1/900 of 2 * horizon + future_tolerance)"
                )
        if not 0 < self.recency_decay <= 1:
            raise ValueError("recency_decay must be in (0, 1]")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def tuned(self, overrides: Mapping[str, Any] | None) -> PipelineSettings:
        """These settings with the staff's tuning (``LIVE_TUNABLES`` only) on
        top; raises ValueError naming what is wrong."""
        overrides = dict(overrides or {})
        fixed = sorted(set(overrides) - set(LIVE_TUNABLES))
        if fixed:
            raise ValueError(f"not tunable while the job runs: {', '.join(fixed)}")
        if "event_weights" in overrides:
            overrides["event_weights"] = _weights(self.event_weights, overrides["event_weights"])
        tuned = dataclasses.replace(self, **overrides)
        tuned.validate()
        return tuned


def _weights(base: Mapping[str, float], given: Mapping[str, Any] | None) -> dict[str, float]:
    """``base`` with the weights ``given`` (a partial mapping) on top."""
    weights = dict(given or {})
    bad = sorted(set(weights) - set(schema.EVENT_TYPES))
    if bad:
        raise ValueError(f"event_weights: unknown event types {', '.join(bad)}")
    return {**base, **{k: float(v) for k, v in weights.items()}}


# What staff may change in the admin while the streaming job runs (applied from
# its next micro-batch); the rest is fixed by RECO_PLUGIN["PIPELINE"] at start.
LIVE_TUNABLES: tuple[str, ...] = (
    "event_weights",
    "covisit_window",
    "recent_items",
    "half_life",
    "recency_decay",
    "list_length",
    "trending_window",
    "trending_long_window",
    "product_ttl",
    "visitor_ttl",
    "exploration",
    "ranking",
)

# The tunables that act only on one visitor's own lists (how their recent items
# are weighed into their list and favourite category, how much the blend
# explores, whether the ranker or the blend orders what they are served): each
# arm of an experiment can have its own. The others shape what the pipeline
# learns, keeps or writes for every visitor (co-visitation, trending, event
# weights, lists' length, what is kept how long), so all arms share them. (The
# ranker learns from every visitor's trials whatever orders their lists.)
ARM_TUNABLES: tuple[str, ...] = ("recency_decay", "exploration", "ranking")
SHARED_TUNABLES: tuple[str, ...] = tuple(n for n in LIVE_TUNABLES if n not in ARM_TUNABLES)


def parse_tuning(raw: str | bytes | None) -> dict[str, Any]:
    """The published tuning (``keys.tuning``) as a dict with ``version``,
    ``pipeline`` and ``strategies``; empty when nothing is published."""
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("the published tuning is not a JSON object")
    return value
