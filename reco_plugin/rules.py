"""Merchandising rules staff set in the admin: pin, boost, block. Django-free:
the serving path and the Spark job both read them.

A rule names a product, an action and where it applies (``scope``):
everywhere (``global``), on lists shown in a ``category`` (the context
product's category, or the category asked for), or on the page of one
``product``; and optionally when (``starts_ms``, ``ends_ms``, epoch ms).

- **block**: the product is never served there.
- **boost** (``factor`` > 1 moves up, < 1 moves down): a served product's rank
  is divided by the factor, so ``2`` takes the 7th item to about the 4th.
- **pin** (``position``, 1 is first): the product is put at that position,
  whatever the blend chose, when the catalog can show it.

Serving applies every rule to every list it serves. The pipeline applies the
blocks when it cuts the lists it writes to their length (:class:`Shortlist`),
each list under the blocks of where it is shown (a product's lists: its page
and category; a category's trending: the category; the rest: everywhere), so
that a list is still full once serving has left out what is blocked.

The admin publishes the enabled rules to Redis (``keys.rules``) as one JSON list.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

PIN, BOOST, BLOCK = "pin", "boost", "block"
ACTIONS = (PIN, BOOST, BLOCK)
GLOBAL, CATEGORY, PRODUCT = "global", "category", "product"
SCOPES = (GLOBAL, CATEGORY, PRODUCT)


@dataclasses.dataclass(frozen=True)
class Rule:
    id: int
    action: str
    product_id: str
    scope: str = GLOBAL
    # the category, or the context product's id; "" for global
    scope_value: str = ""
    position: int | None = None
    factor: float | None = None
    starts_ms: int | None = None
    ends_ms: int | None = None

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> Rule:
        rule = cls(
            id=int(value["id"]),
            action=str(value["action"]),
            product_id=str(value["product_id"]),
            scope=str(value.get("scope") or GLOBAL),
            scope_value=str(value.get("scope_value") or ""),
            position=None if value.get("position") is None else int(value["position"]),
            factor=None if value.get("factor") is None else float(value["factor"]),
            starts_ms=None if value.get("starts_ms") is None else int(value["starts_ms"]),
            ends_ms=None if value.get("ends_ms") is None else int(value["ends_ms"]),
        )
        rule.check()
        return rule

    def check(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        if self.scope != GLOBAL and not self.scope_value:
            raise ValueError(f"a {self.scope} rule needs the {self.scope} it applies to")
        if self.action == PIN and not (self.position and self.position >= 1):
            raise ValueError("a pin needs a position of 1 or more")
        if self.action == BOOST and not (self.factor and self.factor > 0):
            raise ValueError("a boost needs a factor above 0")
        if self.starts_ms and self.ends_ms and self.ends_ms <= self.starts_ms:
            raise ValueError("a rule must end after it starts")

    def live(self, now_ms: int) -> bool:
        return (self.starts_ms is None or self.starts_ms <= now_ms) and (
            self.ends_ms is None or now_ms < self.ends_ms
        )

    def applies(self, product: str | None, category: str | None) -> bool:
        """Whether the rule holds on a list shown on ``product``'s page, in ``category``."""
        if self.scope == GLOBAL:
            return True
        if self.scope == CATEGORY:
            return category is not None and self.scope_value == category
        return product is not None and self.scope_value == product

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def parse(raw: str | bytes | None) -> list[Rule]:
    """The published rules. A malformed entry is left out (and logged), the
    others still hold; raises ValueError when the whole value is unreadable."""
    if not raw:
        return []
    value = json.loads(raw)
    if not isinstance(value, list):
        raise ValueError("the published rules are not a JSON list")
    found = []
    for item in value:
        try:
            found.append(Rule.from_mapping(item))
        except (ValueError, TypeError, KeyError) as exc:
            logger.error("reco: a published rule is left out (%s): %r", exc, item)
    return found


def dumps(rules: Iterable[Rule]) -> str:
    return json.dumps([rule.as_dict() for rule in rules], sort_keys=True)


def in_effect(
    rules: Sequence[Rule], now_ms: int, product: str | None, category: str | None
) -> list[Rule]:
    """The rules that hold now on a list shown on ``product``'s page in ``category``."""
    return [r for r in rules if r.live(now_ms) and r.applies(product, category)]


def depth(length: int, left_out: int) -> int:
    """Candidates enough for a list of ``length`` when up to ``left_out`` of
    them may be left out or held (within reason)."""
    return length + min(left_out, 4 * length) + 1


@dataclasses.dataclass(frozen=True)
class Shortlist:
    """How the pipeline cuts a ranked list of candidates to the length it
    writes, under the blocks that hold where the list is shown:

    - a product blocked everywhere for good (a global block with no end), or
      that the catalog cannot show, is left out, and the next candidate
      takes its place;
    - a product blocked only for a while, or only on some pages (a category,
      a product's page), is kept beyond the length: serving leaves it out
      where and while the block holds, and the list is still full; it is
      back when the block ends, and other pages, and the lists the pipeline
      derives from this one (a visitor's), still have it.

    Boosts and pins act when a list is served, on what it holds."""

    removed: frozenset[str] = frozenset()
    held: frozenset[str] = frozenset()

    def depth(self, length: int) -> int:
        """How many of the best candidates to look at for a list of ``length``."""
        return depth(length, len(self.held) + len(self.removed))

    def cut(self, ranked: Sequence[dict[str, Any]], length: int) -> list[dict[str, Any]]:
        """``ranked`` (best first) cut to ``length`` items plus the held ones among them."""
        if not self.removed and not self.held and length >= 0:
            return list(ranked[:length])  # (no block: the first ``length``)
        kept = []
        counted = 0
        for item in ranked:
            if counted == length:
                break
            product_id = item["product_id"]
            if product_id in self.removed:
                continue
            kept.append(item)
            counted += product_id not in self.held
        return kept


def blocked(rules: Sequence[Rule]) -> set[str]:
    return {r.product_id for r in rules if r.action == BLOCK}


def reach(rules: Sequence[Rule], limit: int, listed: Callable[[str], bool]) -> int:
    """How many items to rank for ``limit`` to be served under these rules: an
    item a boost of ``f`` lifts into the first ``limit`` ranks up to
    ``limit * f`` (at most four times the limit); only boosted products
    ``listed`` (among the candidates) count."""
    factors: dict[str, float] = {}
    for rule in rules:
        if rule.action == BOOST and rule.factor:
            factors[rule.product_id] = factors.get(rule.product_id, 1.0) * rule.factor
    most = max((f for p, f in factors.items() if f > 1 and listed(p)), default=1.0)
    return min(math.ceil(limit * most), 4 * limit) if most > 1 else limit


def boosted(items: list[dict[str, Any]], rules: Sequence[Rule]) -> list[dict[str, Any]]:
    """``items`` reordered by rank / factor of the boosts that hold (stable);
    each moved item says which rules touched it (``rules``)."""
    factors: dict[str, float] = {}
    touched: dict[str, list[int]] = {}
    for rule in rules:
        if rule.action == BOOST and rule.factor:
            factors[rule.product_id] = factors.get(rule.product_id, 1.0) * rule.factor
            touched.setdefault(rule.product_id, []).append(rule.id)
    if not factors:
        return items
    ranked = sorted(
        enumerate(items),
        key=lambda pair: ((pair[0] + 1) / factors.get(pair[1]["product_id"], 1.0), pair[0]),
    )
    result = []
    for _, item in ranked:
        if item["product_id"] in touched:
            item = {**item, "rules": [*item.get("rules", ()), *touched[item["product_id"]]]}
        result.append(item)
    return result


def pins(rules: Sequence[Rule]) -> list[tuple[int, str, int]]:
    """(position from 0, product, rule id) of the pins that hold, by position;
    one pin per position and per product (the lowest rule id wins)."""
    taken_positions: set[int] = set()
    taken_products: set[str] = set()
    result = []
    for rule in sorted((r for r in rules if r.action == PIN), key=lambda r: (r.position, r.id)):
        position = int(rule.position or 1) - 1
        if position in taken_positions or rule.product_id in taken_products:
            continue
        taken_positions.add(position)
        taken_products.add(rule.product_id)
        result.append((position, rule.product_id, rule.id))
    return result


def pinned(
    items: list[dict[str, Any]], placed: Sequence[tuple[int, dict[str, Any], int]], limit: int
) -> list[dict[str, Any]]:
    """``items`` with each pinned item (position, item, rule id) put at its
    position (or at the end when the list is shorter), cut to ``limit``."""
    ids = {item["product_id"] for _, item, _ in placed}
    result = [item for item in items if item["product_id"] not in ids]
    for position, item, rule_id in sorted(placed, key=lambda p: p[0]):
        entry = {**item, "strategy": PIN + "ned", "rules": [rule_id]}
        result.insert(min(position, len(result)), entry)
    return result[:limit]
