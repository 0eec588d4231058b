"""Scoring parameters shared by the Spark jobs and the Django app. Django-free.

The defaults here are what the pipeline uses unless the job is started with
other values; ``reco_plugin.conf`` exposes the same names to the shop.
"""

from __future__ import annotations

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

# A visitor's items are paired with at most this many of their previous items...
RECENT_ITEMS = 20
# ...seen at most this long before (event time).
COVISIT_WINDOW_SECONDS = 30 * 60
# Trending: interactions in the last TRENDING_WINDOW of event time, in buckets.
TRENDING_BUCKET_SECONDS = 5 * 60
TRENDING_WINDOW_SECONDS = 60 * 60
# Length of the lists the pipeline writes.
LIST_LENGTH = 50
# Recency decay of a visitor's items when building their personal list:
# the n-th most recent item counts RECENCY_DECAY ** n.
RECENCY_DECAY = 0.85

STRATEGY_PERSONAL = "personal"
STRATEGY_SIMILAR = "similar"
STRATEGY_TRENDING = "trending"
