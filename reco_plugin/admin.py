"""The app's admin section (``/admin/reco_plugin/``): tuning versions."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from . import scoring, strategies, tuning
from .models import PIPELINE_FIELDS, WEIGHT_FIELDS, Tuning

TUNED_FIELDS = (*WEIGHT_FIELDS.values(), *PIPELINE_FIELDS)


def _strategy_field(name: str) -> str:
    return f"strategy_{name}"


class _StrategyFields(forms.models.ModelFormMetaclass):
    """Declares one ``strategy_<name>`` field per strategy (the admin only
    accepts declared fields in its fieldsets)."""

    def __new__(mcs, name: str, bases: Any, attrs: dict[str, Any]) -> Any:
        for strategy in strategies.STRATEGIES:
            attrs[_strategy_field(strategy)] = forms.CharField(
                label=strategy,
                required=False,
                initial=strategies.LEARNT,
                help_text="learnt, off, or a fixed weight (1 weighs as an average learnt strategy)",
                widget=forms.TextInput(attrs={"size": 8}),
            )
        return super().__new__(mcs, name, bases, attrs)


class TuningForm(forms.ModelForm, metaclass=_StrategyFields):
    """A version's fields, with one choice per strategy: ``learnt`` (the
    bandit decides), ``off``, or a fixed weight."""

    class Meta:
        model = Tuning
        fields = ["note", *TUNED_FIELDS]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        chosen = dict(self.instance.strategies or {})
        chosen.update(self.initial.get("strategies") or {})
        for name, value in chosen.items():
            if name in strategies.STRATEGIES:
                self.initial[_strategy_field(name)] = str(value)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        choices = {}
        for name in strategies.STRATEGIES:
            value = (cleaned.get(_strategy_field(name)) or strategies.LEARNT).strip().lower()
            if value != strategies.LEARNT:
                choices[name] = value
        try:
            self.instance.strategies = strategies.check_overrides(choices)
        except ValueError as exc:
            self.add_error(None, str(exc))
            return cleaned
        draft = Tuning(**{name: cleaned.get(name) for name in TUNED_FIELDS})
        for problem in tuning.check(draft.pipeline(), self.instance.strategies):
            self.add_error(None, problem)
        return cleaned


@admin.register(Tuning)
class TuningAdmin(admin.ModelAdmin):
    """Every saved version is kept and never edited: staff add a version
    (starting from the active one's values), which is published at once; a
    roll-back adds a copy of an older one."""

    form = TuningForm
    list_display = ("__str__", "is_active", "created_by", "created_at", "summary")
    list_display_links = ("__str__",)
    actions = ["roll_back"]
    readonly_fields = ("strategies_chosen", "changes", "created_by", "created_at")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        defaults = scoring.PipelineSettings()
        weights = ", ".join(
            f"{k.replace('_', ' ')} {v:g}" for k, v in defaults.event_weights.items()
        )
        sections: list[Any] = [
            (None, {"fields": ["note"]}),
            (
                "Event weights",
                {
                    "fields": list(WEIGHT_FIELDS.values()),
                    "description": "How much one event says about interest in a product. "
                    f"Empty: the shop's setting (defaults: {weights}).",
                },
            ),
            (
                "Windows and decay",
                {
                    "fields": [
                        "covisit_window",
                        "recent_items",
                        "half_life",
                        "recency_decay",
                        "trending_window",
                        "trending_long_window",
                    ]
                },
            ),
            ("Lists", {"fields": ["list_length", "product_ttl", "visitor_ttl"]}),
        ]
        if obj is None:
            blend = [*(_strategy_field(s) for s in strategies.STRATEGIES), "exploration"]
        else:
            blend = ["strategies_chosen", "exploration"]
        sections.append(
            (
                "Strategies in the blend",
                {
                    "fields": blend,
                    "description": "Learnt: the bandit shares the slots by what each strategy "
                    "earns. Off: never shown. A number: that fixed weight.",
                },
            )
        )
        if obj is not None:
            sections.append(("Audit", {"fields": ["changes", "created_by", "created_at"]}))
        return sections

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        """A new version starts from the active one."""
        current = tuning.active()
        return current.values() if current is not None else {}

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the versions are the audit trail

    def save_model(self, request: HttpRequest, obj: Tuning, form: Any, change: bool) -> None:
        tuning.save_version(obj, request.user)
        self._published(request, obj)

    def _published(self, request: HttpRequest, obj: Tuning) -> None:
        if tuning.publish(obj):
            self.message_user(
                request,
                f"Version {obj.pk} is active: the streaming job applies it from its next "
                "micro-batch, the lists served from now on follow its strategy choices.",
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                f"Version {obj.pk} is saved but Redis did not answer: it is published by "
                "the next periodic sync.",
                messages.WARNING,
            )

    @admin.action(description="Roll back to the selected version", permissions=["add"])
    def roll_back(self, request: HttpRequest, queryset: Any) -> None:
        if queryset.count() != 1:
            self.message_user(
                request, "Select exactly one version to roll back to.", messages.ERROR
            )
            return
        copy = tuning.roll_back(queryset.get(), request.user)
        self.log_addition(request, copy, [{"added": {}}])
        self._published(request, copy)

    @admin.display(boolean=True, description="active")
    def is_active(self, obj: Tuning) -> bool:
        current = tuning.active()
        return current is not None and current.pk == obj.pk

    @admin.display(description="changes")
    def summary(self, obj: Tuning) -> str:
        return "; ".join(obj.changes.splitlines()[:3]) + (
            " …" if obj.changes.count("\n") >= 3 else ""
        )

    @admin.display(description="strategies")
    def strategies_chosen(self, obj: Tuning) -> str:
        chosen = obj.strategies or {}
        return ", ".join(f"{s} {chosen.get(s, strategies.LEARNT)}" for s in strategies.STRATEGIES)
