"""What may be listed: the products the catalog cannot show, and the blocks of
the merchandising rules staff published, by where they hold. Every list the
streaming job and the retraining write is cut under them."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import redis

from reco_plugin import keys, rules

logger = logging.getLogger(__name__)


class Merchandise:
    """What may be listed, read once per list refresh: the products the
    catalog cannot show (out of stock, blocked there), and the blocks of the
    merchandising rules that hold now or will, indexed by where they hold."""

    def __init__(
        self, unavailable: frozenset[str], published: Sequence[rules.Rule], now_ms: int
    ) -> None:
        # blocks holding now or later (one that starts later is held already,
        # so that the lists are full when it does)
        blocks = [
            r
            for r in published
            if r.action == rules.BLOCK and (r.ends_ms is None or now_ms < r.ends_ms)
        ]
        # never listed: the catalog's, and global blocks for good, from now on
        self.removed = frozenset(
            {
                *unavailable,
                *(
                    r.product_id
                    for r in blocks
                    if r.scope == rules.GLOBAL and r.ends_ms is None and r.live(now_ms)
                ),
            }
        )
        self.everywhere = rules.Shortlist(
            self.removed,
            frozenset(r.product_id for r in blocks if r.scope == rules.GLOBAL) - self.removed,
        )
        self.in_category: dict[str, set[str]] = {}
        self.on_page: dict[str, set[str]] = {}
        for rule in blocks:
            if rule.scope == rules.CATEGORY:
                self.in_category.setdefault(rule.scope_value, set()).add(rule.product_id)
            elif rule.scope == rules.PRODUCT:
                self.on_page.setdefault(rule.scope_value, set()).add(rule.product_id)

    @property
    def by_category(self) -> bool:
        """Whether a block holds in a category (a list's category then matters)."""
        return bool(self.in_category)

    def shortlist(self, product: str | None = None, category: str | None = None) -> rules.Shortlist:
        """How to cut a list shown on ``product``'s page in ``category``
        (neither: a list shown on any page, under the global rules only)."""
        scoped = self.on_page.get(product or "", set()) | self.in_category.get(
            category or "", set()
        )
        if not scoped:
            return self.everywhere
        return rules.Shortlist(self.removed, self.everywhere.held | (scoped - self.removed))

    def depth(self, length: int) -> int:
        """How many candidates any list of ``length`` may need, whatever its page."""
        scoped = max(
            (len(s) for s in (*self.in_category.values(), *self.on_page.values())), default=0
        )
        return rules.depth(length, len(self.removed) + len(self.everywhere.held) + scoped)


def read_merchandise(r: redis.Redis) -> Merchandise:
    """What may be listed now, read once per list refresh."""
    pipe = r.pipeline(transaction=False)
    pipe.smembers(keys.catalog_unavailable())
    pipe.get(keys.rules())
    members, published = pipe.execute()
    try:
        found = rules.parse(published)
    except (ValueError, TypeError, KeyError) as exc:
        logger.error("the published rules are ignored: %s", exc)
        found = []
    return Merchandise(frozenset(members), found, int(time.time() * 1000))
