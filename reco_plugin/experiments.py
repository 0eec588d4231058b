"""A/B experiments between tuning versions. Django-free: the serving path,
the Spark job and the admin's report share it.

An experiment has arms, each a tuning version and a share of the traffic.
A visitor's arm is a stable hash of the experiment and the visitor id, so the
same visitor sees the same arm on every page, process and day, and the job
can tell it without asking anyone. While the experiment runs, a visitor's
lists follow their arm's version: its strategy choices, exploration and
ranking (the ranker or the blend) when they are served, its recency decay when
the job writes their personal lists (``scoring.ARM_TUNABLES``). What the job
learns, keeps and writes for everyone (event weights, windows, half-life,
lists' length, TTLs) is one for all arms, that of the active version, so the
arms' versions must agree with it (the admin checks).
Their ``reco_id`` says the arm (``x<experiment>.<arm>.<id>``): an impression
or a click is attributed to the arm whose list it came from; add-to-carts and
purchases to the visitor's arm.

The job counts per arm (exactly once, in its batch transaction): impressions
and clicks, and the visitors who saw a recommendation (``exposed``), added to
cart (``carted``) and bought (``purchased``). :func:`report` turns them into
rates with 95% intervals and says whether each arm differs from the first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from . import keys, scoring, strategies

logger = logging.getLogger(__name__)

COUNTS = ("impressions", "clicks")
VISITOR_SETS = ("exposed", "clicked", "carted", "purchased")
# 95% two-sided
Z = 1.959963984540054


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    share: float
    tuning: int | None = None
    strategies: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # the version's values of scoring.ARM_TUNABLES (with the defaults filled in)
    pipeline: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Experiment:
    id: int
    arms: tuple[Arm, ...]
    starts_ms: int
    ends_ms: int | None = None

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> Experiment:
        arms = tuple(
            Arm(
                name=str(a["name"]),
                share=float(a["share"]),
                tuning=None if a.get("tuning") is None else int(a["tuning"]),
                strategies=dict(a.get("strategies") or {}),
                pipeline=_own(a.get("pipeline") or {}),
            )
            for a in value["arms"]
        )
        experiment = cls(
            id=int(value["id"]),
            arms=arms,
            starts_ms=int(value["starts_ms"]),
            ends_ms=None if value.get("ends_ms") is None else int(value["ends_ms"]),
        )
        experiment.check()
        return experiment

    def check(self) -> None:
        if len(self.arms) < 2:
            raise ValueError("an experiment needs at least two arms")
        if any(a.share <= 0 for a in self.arms):
            raise ValueError("every arm needs a share above 0")
        if abs(sum(a.share for a in self.arms) - 100.0) > 1e-6:
            raise ValueError("the arms' shares must add up to 100")
        if self.ends_ms is not None and self.ends_ms <= self.starts_ms:
            raise ValueError("an experiment must end after it starts")
        for arm in self.arms:
            strategies.check_overrides(arm.strategies)
            shared = sorted(set(arm.pipeline) - set(scoring.ARM_TUNABLES))
            if shared:
                raise ValueError(f"arm {arm.name}: all arms share {', '.join(shared)}")
            try:
                scoring.PipelineSettings().tuned(arm.pipeline)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"arm {arm.name}: {exc}") from None

    def settings(self, arm: int, base: scoring.PipelineSettings) -> scoring.PipelineSettings:
        """``base`` (the job's settings) with the arm's own values on top."""
        return base.tuned(self.arms[arm].pipeline)

    def running(self, now_ms: int) -> bool:
        return self.starts_ms <= now_ms and (self.ends_ms is None or now_ms < self.ends_ms)

    def arm_of(self, visitor_id: str) -> int:
        """The visitor's arm (an index): the same for the same visitor, always."""
        digest = hashlib.sha256(f"{self.id}|{visitor_id}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64 * 100.0
        total = 0.0
        for index, arm in enumerate(self.arms):
            total += arm.share
            if point < total:
                return index
        return len(self.arms) - 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "starts_ms": self.starts_ms,
            "ends_ms": self.ends_ms,
            "arms": [
                dataclasses.asdict(a)
                | {"strategies": dict(a.strategies), "pipeline": dict(a.pipeline)}
                for a in self.arms
            ],
        }


def _own(values: Mapping[str, Any]) -> dict[str, Any]:
    """An arm's published settings that are its own (``scoring.ARM_TUNABLES``);
    others (published by an earlier release) are shared by all arms: left out."""
    dropped = sorted(set(values) - set(scoring.ARM_TUNABLES))
    if dropped:
        logger.warning("reco: an arm's %s are shared by all arms: ignored", ", ".join(dropped))
    return {k: v for k, v in values.items() if k in scoring.ARM_TUNABLES}


def parse(raw: str | bytes | None) -> Experiment | None:
    if not raw:
        return None
    return Experiment.from_mapping(json.loads(raw))


def member(experiment_id: int, visitor_id: str) -> str:
    """How a visitor is kept in an arm's sets: a digest, not the id itself."""
    return hashlib.sha256(f"member|{experiment_id}|{visitor_id}".encode()).hexdigest()[:24]


def tag(experiment_id: int, arm: int) -> str:
    """The ``reco_id`` prefix of lists served to an arm."""
    return f"x{experiment_id}.{arm}."


def arm_in(reco_id: Any, experiment_id: int) -> int | None:
    """The arm a ``reco_id`` was served to in this experiment, if it was."""
    if not isinstance(reco_id, str) or not reco_id.startswith(f"x{experiment_id}."):
        return None
    try:
        arm = int(reco_id.split(".")[1])
    except (IndexError, ValueError):
        return None
    return arm if arm >= 0 else None


def wilson(successes: int, trials: int) -> tuple[float, float, float] | None:
    """The rate and its 95% Wilson interval; None without trials."""
    if trials <= 0:
        return None
    successes = min(max(successes, 0), trials)
    p = successes / trials
    denominator = 1 + Z * Z / trials
    centre = (p + Z * Z / (2 * trials)) / denominator
    half = Z * math.sqrt(p * (1 - p) / trials + Z * Z / (4 * trials * trials)) / denominator
    return p, max(0.0, centre - half), min(1.0, centre + half)


def z_test(a: tuple[int, int], b: tuple[int, int]) -> float | None:
    """Two-sided p-value of the difference of two proportions (pooled z-test)."""
    (x1, n1), (x2, n2) = a, b
    if n1 <= 0 or n2 <= 0:
        return None
    x1, x2 = min(max(x1, 0), n1), min(max(x2, 0), n2)
    pooled = (x1 + x2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / spread
    return math.erfc(abs(z) / math.sqrt(2))


def report(
    experiment: Experiment, counts: Mapping[str, int], sets: Mapping[tuple[int, str], int]
) -> dict[str, Any]:
    """Per arm: impressions, clicks and CTR; among the exposed visitors (the
    unit the split randomises), the share who clicked, added to cart and
    bought, with 95% intervals; and against the first arm (the control) a
    p-value and a plain statement for the click and conversion rates.

    ``counts``: ``"<arm>:impressions"`` / ``"<arm>:clicks"`` -> n; ``sets``:
    (arm, ``exposed`` / ``clicked_exposed`` / ``carted_exposed`` /
    ``purchased_exposed``) -> visitors."""
    arms = []
    for index, arm in enumerate(experiment.arms):
        impressions = int(counts.get(f"{index}:impressions", 0))
        clicks = int(counts.get(f"{index}:clicks", 0))
        exposed = int(sets.get((index, "exposed"), 0))
        clickers = int(sets.get((index, "clicked_exposed"), 0))
        carted = int(sets.get((index, "carted_exposed"), 0))
        bought = int(sets.get((index, "purchased_exposed"), 0))
        arms.append(
            {
                "name": arm.name,
                "share": arm.share,
                "tuning": arm.tuning,
                "impressions": impressions,
                "clicks": clicks,
                "exposed": exposed,
                "clickers": clickers,
                "carted": carted,
                "purchased": bought,
                # clicks per impression, as shown; impressions of one visitor are
                # not independent, so the interval and the test are per visitor
                "ctr": clicks / impressions if impressions else None,
                "click_rate": wilson(clickers, exposed),
                "add_to_cart": wilson(carted, exposed),
                "conversion": wilson(bought, exposed),
            }
        )
    control = arms[0]
    for arm in arms[1:]:
        arm["versus_control"] = {
            "click_rate": _compare(
                (arm["clickers"], arm["exposed"]), (control["clickers"], control["exposed"])
            ),
            "conversion": _compare(
                (arm["purchased"], arm["exposed"]), (control["purchased"], control["exposed"])
            ),
        }
    return {"id": experiment.id, "arms": arms}


def _compare(arm: tuple[int, int], control: tuple[int, int]) -> dict[str, Any]:
    p = z_test(arm, control)
    if p is None:
        return {"p_value": None, "statement": "no data yet"}
    rate, base = arm[0] / arm[1], control[0] / control[1]
    direction = "higher" if rate > base else "lower"
    if p < 0.05:
        statement = f"significantly {direction} than the control (p = {p:.3f})"
    else:
        statement = f"not significantly different from the control yet (p = {p:.2f})"
    return {"p_value": p, "statement": statement, "difference": rate - base}


def read_report(r: Any, experiment: Experiment) -> dict[str, Any]:
    """:func:`report` on what the job counted in Redis (one round trip)."""
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(keys.experiment_counts(experiment.id))
    for arm in range(len(experiment.arms)):
        exposed = keys.experiment_visitors(experiment.id, arm, "exposed")
        pipe.scard(exposed)
        for name in ("clicked", "carted", "purchased"):
            pipe.sintercard(2, [exposed, keys.experiment_visitors(experiment.id, arm, name)])
    replies = pipe.execute()
    counts = {str(k): int(v) for k, v in (replies[0] or {}).items()}
    sets: dict[tuple[int, str], int] = {}
    for arm in range(len(experiment.arms)):
        exposed, clicked, carted, bought = replies[1 + 4 * arm : 5 + 4 * arm]
        sets[(arm, "exposed")] = int(exposed)
        sets[(arm, "clicked_exposed")] = int(clicked)
        sets[(arm, "carted_exposed")] = int(carted)
        sets[(arm, "purchased_exposed")] = int(bought)
    return report(experiment, counts, sets)
