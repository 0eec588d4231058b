"""What staff tune in the admin (``reco_plugin.tuning`` publishes it)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from . import scoring
from .ranker import WARM_EXAMPLES

# event type -> the model field holding its weight
WEIGHT_FIELDS: dict[str, str] = {
    event_type: f"weight_{event_type}" for event_type in scoring.EVENT_WEIGHTS
}
# the pipeline settings a version may set (scoring.LIVE_TUNABLES, less the weights)
PIPELINE_FIELDS: tuple[str, ...] = tuple(f for f in scoring.LIVE_TUNABLES if f != "event_weights")


def _created_by() -> models.ForeignKey:
    return models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )


def _ms(value: Any) -> int | None:
    """A datetime as epoch milliseconds."""
    return None if value is None else int(value.timestamp() * 1000)


def _between(low: float, high: float, help_text: str = "", **high_options: Any) -> Any:
    """An optional number between ``low`` and ``high``."""
    return models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(low), MaxValueValidator(high, **high_options)],
        help_text=help_text,
    )


def _weight() -> models.FloatField:
    return _between(
        0.0,
        scoring.MAX_EVENT_WEIGHT,
        message=f"At most {scoring.MAX_EVENT_WEIGHT:g} (a purchase weighs "
        f"{scoring.EVENT_WEIGHTS['purchase']:g} by default).",
    )


def _seconds(help_text: str) -> models.PositiveIntegerField:
    return models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text=help_text
    )


class Tuning(models.Model):
    """One version of the staff's tuning. Versions are never edited: a change
    is a new version, which becomes the active one when saved (the newest that
    is not a draft is active), so the list of versions is the audit trail and
    a roll-back is a new version copying an older one. A draft is kept for an
    experiment's arm, not applied. An empty field (None, or "" for the
    ranking) keeps the value of ``RECO_PLUGIN["PIPELINE"]`` (or its default)."""

    note = models.CharField(
        max_length=200, blank=True, help_text="What this version changes, and why."
    )
    draft = models.BooleanField(
        default=False,
        help_text="Keep it for an experiment's arm without applying it. "
        "“Roll back to the selected version” activates a copy of it later.",
    )

    weight_page_view = _weight()
    weight_click = _weight()
    weight_add_to_cart = _weight()
    weight_remove_from_cart = _weight()
    weight_purchase = _weight()
    weight_impression = _weight()

    covisit_window = _seconds(
        "Seconds: two items a visitor saw at most this far apart are related."
    )
    recent_items = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Each event is paired with at most this many of the visitor's other items.",
    )
    half_life = _seconds("Seconds: what was learnt counts half after this long.")
    recency_decay = _between(
        0.01, 1.0, "A visitor's n-th most recent item counts this to the power n in their list."
    )
    list_length = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(500)],
        help_text="Items in each list the pipeline writes.",
    )
    trending_window = _seconds("Seconds of events in the short trending lists.")
    trending_long_window = _seconds("Seconds of events in the long trending lists.")
    product_ttl = _seconds("Seconds a product's lists live after its last event.")
    visitor_ttl = _seconds("Seconds a visitor's lists live after their last event.")
    exploration = _between(
        0.0,
        1.0,
        "Share of slots filled by a random strategy, so every strategy keeps being judged.",
    )
    # blank, not null: Django keeps "no value" of a text field as ""
    ranking = models.CharField(
        max_length=8,
        blank=True,
        default="",
        choices=[
            ("", "the shop's setting"),
            (scoring.RANKER, "ranker: the model learnt online orders every strategy's candidates"),
            (scoring.BLEND, "blend: the bandit fills the slots strategy by strategy"),
        ],
        help_text="How a list is ordered. The ranker is served once it has learnt from "
        f"{WARM_EXAMPLES:,} examples (the blend until then).",
    )
    # strategy -> "learnt" | "off" | a fixed weight (strategies.check_overrides)
    strategies = models.JSONField(default=dict, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    created_by = _created_by()
    # what this version changed from the one active before it
    changes = models.TextField(blank=True, editable=False)

    class Meta:
        ordering = ["-pk"]
        get_latest_by = "pk"
        verbose_name = "tuning version"
        permissions = [
            ("preview_visitor", "Can preview a visitor's recommendations (shows their history)")
        ]

    def __str__(self) -> str:
        return f"version {self.pk}" + (f": {self.note}" if self.note else "")

    def pipeline(self) -> dict[str, Any]:
        """The pipeline settings this version sets (``PipelineSettings.tuned``)."""
        values: dict[str, Any] = {
            name: getattr(self, name)
            for name in PIPELINE_FIELDS
            if getattr(self, name) not in (None, "")
        }
        weights = {
            event_type: getattr(self, field)
            for event_type, field in WEIGHT_FIELDS.items()
            if getattr(self, field) is not None
        }
        if weights:
            values["event_weights"] = weights
        return values

    def published(self) -> dict[str, Any]:
        """What is written to Redis for the job and the serving path."""
        return {
            "version": self.pk,
            "pipeline": self.pipeline(),
            "strategies": dict(self.strategies),
        }

    def settings(self) -> Any:
        """The pipeline settings of this version: defaults, under
        ``RECO_PLUGIN["PIPELINE"]``, under its values."""
        from .conf import reco_settings
        from .scoring import PipelineSettings

        return PipelineSettings.from_mapping(reco_settings.PIPELINE).tuned(self.pipeline())

    def own_values(self) -> dict[str, Any]:
        """Its values of what an experiment's arm may set for its own visitors
        (``scoring.ARM_TUNABLES``), defaults filled in."""
        from .scoring import ARM_TUNABLES

        settings = self.settings()
        return {name: getattr(settings, name) for name in ARM_TUNABLES}

    def shared_differences(self, other: Tuning | None) -> list[str]:
        """The settings all arms share (``scoring.SHARED_TUNABLES``) on which
        this version and ``other`` (None: the defaults and the shop's settings)
        differ."""
        from .conf import reco_settings
        from .scoring import SHARED_TUNABLES, PipelineSettings

        mine = self.settings()
        theirs = (
            other.settings()
            if other is not None
            else PipelineSettings.from_mapping(reco_settings.PIPELINE)
        )
        return [n for n in SHARED_TUNABLES if getattr(mine, n) != getattr(theirs, n)]

    def values(self) -> dict[str, Any]:
        """The tunable fields, to copy this version into a new one."""
        names = (*WEIGHT_FIELDS.values(), *PIPELINE_FIELDS, "strategies")
        return {name: getattr(self, name) for name in names}


class ForgottenVisitor(models.Model):
    """A request to forget a visitor, kept as the record that it was done.
    The visitor id itself is not kept, only a digest to find a request by."""

    visitor_digest = models.CharField(max_length=64, db_index=True, editable=False)
    keys_deleted = models.PositiveIntegerField(default=0, editable=False)
    requested_at = models.DateTimeField(auto_now_add=True)
    requested_by = _created_by()

    class Meta:
        ordering = ["-pk"]
        verbose_name = "forgotten visitor"

    def __str__(self) -> str:
        return f"visitor {self.visitor_digest[:12]}…"

    def record(self, visitor_id: str, keys_deleted: int, user: Any = None) -> ForgottenVisitor:
        """Saved as the record of a forget (a digest of the id, never the id)."""
        self.visitor_digest = self.digest(visitor_id)
        self.keys_deleted = keys_deleted
        self.requested_by = user
        self.save()
        return self

    @staticmethod
    def digest(visitor_id: str) -> str:
        """Keyed by the shop's SECRET_KEY: an id cannot be found from it by
        trying every user pk."""
        from django.utils.crypto import salted_hmac

        return salted_hmac("reco_plugin.forgotten", visitor_id, algorithm="sha256").hexdigest()


class Rule(models.Model):
    """A merchandising rule (``reco_plugin.rules``): pin, boost or block one
    product, everywhere, in a category, or on one product's page, optionally
    between two times. Published to Redis whenever rules change."""

    ACTIONS = [
        ("pin", "pin at a position"),
        ("boost", "boost by a factor"),
        ("block", "block"),
    ]
    SCOPES = [
        ("global", "everywhere"),
        ("category", "in a category"),
        ("product", "on a product's page"),
    ]

    enabled = models.BooleanField(default=True)
    action = models.CharField(max_length=8, choices=ACTIONS)
    product_id = models.CharField(
        "product", max_length=64, help_text="The id of the product the rule pins, boosts or blocks."
    )
    scope = models.CharField(max_length=8, choices=SCOPES, default="global")
    scope_value = models.CharField(
        "category or product page",
        max_length=200,
        blank=True,
        help_text="The category name, or the id of the product whose page it applies on.",
    )
    position = models.PositiveIntegerField(
        null=True, blank=True, help_text="Pin: the position, 1 is first."
    )
    factor = models.FloatField(
        null=True,
        blank=True,
        help_text="Boost: its rank is divided by this (2 takes the 7th item to about the 4th; "
        "below 1 moves it down).",
    )
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = _created_by()

    class Meta:
        ordering = ["-pk"]

    def __str__(self) -> str:
        where = {"global": "everywhere", "category": f"in {self.scope_value}"}.get(
            self.scope, f"on product {self.scope_value}"
        )
        how = {"pin": f" at {self.position}", "boost": f" x{self.factor:g}" if self.factor else ""}
        return f"{self.action} {self.product_id}{how.get(self.action, '')} {where}"

    def as_rule(self) -> Any:
        from . import rules

        return rules.Rule(
            id=self.pk or 0,
            action=self.action,
            product_id=str(self.product_id).strip(),
            scope=self.scope,
            scope_value="" if self.scope == "global" else self.scope_value.strip(),
            position=self.position if self.action == "pin" else None,
            factor=self.factor if self.action == "boost" else None,
            starts_ms=_ms(self.starts_at),
            ends_ms=_ms(self.ends_at),
        )

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        try:
            self.as_rule().check()
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        from django.utils import timezone

        from .conf import reco_settings

        if self.action == "pin" and self.position and self.position > reco_settings.MAX_LIMIT:
            raise ValidationError(
                f"a pin at {self.position} is never seen: lists are at most "
                f"{reco_settings.MAX_LIMIT} long (MAX_LIMIT)"
            )
        if self.ends_at is not None and self.ends_at <= timezone.now() and self.enabled:
            raise ValidationError(
                "it ends in the past, so it would never hold (disable it instead)"
            )

        label = reco_settings.PRODUCT_MODEL
        if label:
            from django.apps import apps

            product = apps.get_model(label)
            ids = [self.product_id] + ([self.scope_value] if self.scope == "product" else [])
            for value in ids:
                try:
                    found = product._default_manager.filter(pk=value).exists()
                except (ValueError, TypeError):
                    found = False
                if not found:
                    raise ValidationError(f"no product with the id {value!r}")


class Experiment(models.Model):
    """An A/B test between tuning versions (``reco_plugin.experiments``)."""

    name = models.CharField(max_length=120)
    hypothesis = models.TextField(blank=True, help_text="What you expect, and why.")
    starts_at = models.DateTimeField(help_text="From when visitors are split between the arms.")
    ends_at = models.DateTimeField(null=True, blank=True, help_text="Empty: until stopped.")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = _created_by()

    class Meta:
        ordering = ["-starts_at"]

    def __str__(self) -> str:
        return self.name

    def definition(self) -> Any:
        """As the serving path and the job read it."""
        from . import experiments

        return experiments.Experiment(
            id=self.pk,
            arms=tuple(
                experiments.Arm(
                    name=arm.name,
                    share=arm.share,
                    tuning=arm.tuning_id,
                    strategies=dict(arm.tuning.strategies or {}),
                    pipeline=arm.tuning.own_values(),
                )
                for arm in self.arms.select_related("tuning").order_by("pk")
            ),
            starts_ms=_ms(self.starts_at) or 0,
            ends_ms=_ms(self.ends_at),
        )


class ExperimentArm(models.Model):
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="arms")
    name = models.CharField(max_length=60, help_text="The first arm is the control.")
    tuning = models.ForeignKey(
        Tuning,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Its strategy choices are what this arm's visitors are served.",
    )
    share = models.FloatField(
        validators=[MinValueValidator(0.1), MaxValueValidator(100.0)],
        help_text="Percent of the visitors; the arms add up to 100.",
    )

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.name} ({self.share:g}%)"


class Dashboard(Tuning):
    """No data of its own: the admin's dashboard page, listed in the app's section."""

    class Meta:
        proxy = True
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"


class ImportProgress(models.Model):
    """How far ``manage.py reco_import`` has sent one source of history (the
    shop's order lines, or one CSV file by its digest) to Kafka: a run that
    stops (Ctrl-C, Kafka away) resumes after the last events Kafka
    acknowledged, and a finished source is not sent again."""

    source = models.CharField(max_length=200, unique=True, editable=False)
    # the newest history imported from it: later rows came from the live signals
    until = models.DateTimeField(editable=False)
    # where the next run goes on: the last row sent, as the source orders them
    position = models.JSONField(default=dict, editable=False)
    events_sent = models.PositiveBigIntegerField(default=0, editable=False)
    counts = models.JSONField(default=dict, editable=False)
    finished = models.BooleanField(default=False, editable=False)
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "history import"
        verbose_name_plural = "history imports"

    def __str__(self) -> str:
        state = "finished" if self.finished else "in progress"
        return f"{self.source}: {self.events_sent} events, {state}"
