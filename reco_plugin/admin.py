"""The app's admin section (``/admin/reco_plugin/``): tuning versions,
merchandising rules, experiments and their reports, and forgetting visitors."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from . import privacy, scoring, strategies, tuning
from .models import (
    PIPELINE_FIELDS,
    WEIGHT_FIELDS,
    Dashboard,
    Experiment,
    ExperimentArm,
    ForgottenVisitor,
    ImportProgress,
    Rule,
    Tuning,
)

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
        fields = ["note", "draft", *TUNED_FIELDS]

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
        # a field out of its range is named next to it (by the model's own
        # validation); the whole is checked once they all pass
        for name in TUNED_FIELDS:
            value = cleaned.get(name)
            if value is None:
                continue
            try:
                for validator in Tuning._meta.get_field(name).validators:
                    validator(value)
            except forms.ValidationError:
                return cleaned  # reported on the field by the model's validation
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
    list_display = ("__str__", "is_active", "draft", "created_by", "created_at", "summary")
    list_display_links = ("__str__",)
    actions = ["roll_back"]
    readonly_fields = ("strategies_chosen", "changes", "created_by", "created_at")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        defaults = scoring.PipelineSettings()
        weights = ", ".join(
            f"{k.replace('_', ' ')} {v:g}" for k, v in defaults.event_weights.items()
        )
        sections: list[Any] = [
            (None, {"fields": ["note", "draft"]}),
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
            (
                "Ranking",
                {
                    "fields": ["ranking"],
                    "description": "The ranker scores the candidates of every strategy with "
                    "a model the streaming job learns online from what visitors go to next; "
                    "the blend fills slot by slot with the strategy the bandit draws. "
                    "The preview and the dashboard show what the ranker learnt.",
                },
            ),
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
        if obj.draft:
            self.message_user(
                request,
                f"Version {obj.pk} is saved as a draft: not applied. Use it as an "
                "experiment's arm, or activate it with “Roll back to the selected version”.",
                messages.SUCCESS,
            )
            return
        self._published(request, obj)
        self._warn_experiment(request, obj)

    def _warn_experiment(self, request: HttpRequest, obj: Tuning) -> None:
        """Staff who change what every arm shares while an experiment runs (or
        is scheduled) are told that its arms now run on these values."""
        experiment = tuning.current_experiment()
        if experiment is None:
            return
        arms = experiment.arms.select_related("tuning")
        differing = sorted({n for arm in arms for n in arm.tuning.shared_differences(obj)})
        if differing:
            self.message_user(
                request,
                f"The experiment “{experiment}” compares versions whose "
                f"{', '.join(n.replace('_', ' ') for n in differing)} differ from this one's: "
                "its arms now all run on this version's values for those, and its report "
                "mixes both periods.",
                messages.WARNING,
            )

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

    def get_urls(self) -> list[Any]:
        from django.urls import path

        preview = self.admin_site.admin_view(self.preview_view)
        return [
            path("preview/", preview, name="reco_plugin_preview"),
            *super().get_urls(),
        ]

    def preview_view(self, request: HttpRequest) -> Any:
        """Each strategy's list and the blended one for a visitor and/or a
        product, with scores, the blend's chances and the rules that touched items."""
        from django.core.exceptions import PermissionDenied
        from django.template.response import TemplateResponse

        from .preview import preview

        if not self.has_view_permission(request):
            raise PermissionDenied
        asked = {
            name: request.GET.get(name, "").strip() for name in ("visitor", "product", "category")
        }
        if asked["visitor"] and not request.user.has_perm("reco_plugin.preview_visitor"):
            # a visitor's list shows what they saw and bought
            raise PermissionDenied
        try:
            limit = min(max(int(request.GET.get("limit") or 8), 1), 50)
        except ValueError:
            limit = 8
        result = (
            preview(asked["visitor"], asked["product"], asked["category"], limit)
            if any(asked.values())
            else None
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "Preview recommendations",
            "opts": self.model._meta,
            "asked": asked,
            "limit": limit,
            "result": result,
        }
        return TemplateResponse(request, "admin/reco_plugin/preview.html", context)

    @admin.action(description="Roll back to the selected version", permissions=["add"])
    def roll_back(self, request: HttpRequest, queryset: Any) -> None:
        if queryset.count() != 1:
            self.message_user(
                request, "Select exactly one version to roll back to.", messages.ERROR
            )
            return
        chosen = queryset.get()
        current = tuning.active()
        if current is not None and current.pk == chosen.pk:
            self.message_user(
                request, f"Version {chosen.pk} is the active one already.", messages.WARNING
            )
            return
        copy = tuning.roll_back(chosen, request.user)
        self.log_addition(request, copy, [{"added": {}}])
        self._published(request, copy)
        self._warn_experiment(request, copy)

    def get_queryset(self, request: HttpRequest) -> Any:
        """Each row knows the active version's pk (one subquery, not one query a row)."""
        from django.db.models import Subquery

        newest = Tuning.objects.filter(draft=False).order_by("-pk").values("pk")[:1]
        return super().get_queryset(request).annotate(active_pk=Subquery(newest))

    @admin.display(boolean=True, description="active")
    def is_active(self, obj: Tuning) -> bool:
        return obj.pk == getattr(obj, "active_pk", None)

    @admin.display(description="changes")
    def summary(self, obj: Tuning) -> str:
        return "; ".join(obj.changes.splitlines()[:3]) + (
            " …" if obj.changes.count("\n") >= 3 else ""
        )

    @admin.display(description="strategies")
    def strategies_chosen(self, obj: Tuning) -> str:
        chosen = obj.strategies or {}
        return ", ".join(f"{s} {chosen.get(s, strategies.LEARNT)}" for s in strategies.STRATEGIES)


class ForgetForm(forms.ModelForm):
    visitor = forms.CharField(
        max_length=200,
        help_text="A visitor id (u:&lt;user pk&gt;, s:&lt;id&gt;) or a username. Their lists and profile "
        "are deleted from Redis at once, and their earlier events are not learnt again.",
    )

    class Meta:
        model = ForgottenVisitor
        fields: list[str] = []

    def clean_visitor(self) -> str:
        try:
            return privacy.visitor_id_of(self.cleaned_data["visitor"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(ForgottenVisitor)
class ForgottenVisitorAdmin(admin.ModelAdmin):
    """Adding one forgets the visitor; the list is the record of who asked when."""

    form = ForgetForm
    list_display = ("__str__", "keys_deleted", "requested_by", "requested_at")
    search_fields = ["visitor_digest"]  # searched by id, see get_search_results
    readonly_fields = ("visitor_digest", "keys_deleted", "requested_by", "requested_at")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["visitor"] if obj is None else list(self.readonly_fields)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        visitor_id = form.cleaned_data["visitor"]
        try:
            result = privacy.forget(visitor_id)
        except Exception as exc:  # Redis down: queue it rather than lose the request
            from .compat import celery_configured

            if not celery_configured():
                raise
            from .conf import reco_settings
            from .tasks import forget

            forget.delay(visitor_id, recorded=True, shop=reco_settings.KEY_PREFIX)
            self.message_user(
                request,
                f"Redis did not answer ({exc}); the request is queued and retried.",
                messages.WARNING,
            )
            result = {"keys_deleted": 0}
        obj.record(visitor_id, result["keys_deleted"], request.user)

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> Any:
        """Search by the visitor's id: matched through its digest."""
        if search_term:
            try:
                visitor_id = privacy.visitor_id_of(search_term)
            except ValueError:
                return queryset.none(), False
            return queryset.filter(visitor_digest=ForgottenVisitor.digest(visitor_id)), False
        return queryset, False


@admin.register(ImportProgress)
class ImportProgressAdmin(admin.ModelAdmin):
    """What ``manage.py reco_import`` sent of each source; read only (deleting
    one lets its source be sent again, with the same event ids)."""

    list_display = ("source", "until", "events_sent", "finished", "updated_at")
    readonly_fields = ("source", "until", "position", "events_sent", "counts", "finished")

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    """Pins, boosts and blocks; every change is published to Redis when it
    commits (and kept in the object's admin history)."""

    list_display = ("__str__", "enabled", "in_effect", "starts_at", "ends_at", "note", "created_by")
    list_filter = ("enabled", "action", "scope")
    search_fields = ("product_id", "scope_value", "note")
    actions = ["enable", "disable"]
    fieldsets = [
        (None, {"fields": ["enabled", "action", "product_id", "position", "factor"]}),
        ("Where", {"fields": ["scope", "scope_value"]}),
        ("When", {"fields": ["starts_at", "ends_at"], "description": "Empty: from now, for good."}),
        (None, {"fields": ["note"]}),
    ]

    def save_model(self, request: HttpRequest, obj: Rule, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    @admin.display(boolean=True, description="in effect now")
    def in_effect(self, obj: Rule) -> bool:
        import time

        return obj.enabled and obj.as_rule().live(int(time.time() * 1000))

    @admin.action(description="Enable the selected rules", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: Any) -> None:
        self._switch(request, queryset, True)

    @admin.action(description="Disable the selected rules", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: Any) -> None:
        self._switch(request, queryset, False)

    def _switch(self, request: HttpRequest, queryset: Any, enabled: bool) -> None:
        """Enable or disable rules, each change in its history; say how many."""
        changed = 0
        for rule in queryset:
            if rule.enabled == enabled:
                continue
            rule.enabled = enabled
            rule.save(update_fields=["enabled", "updated_at"])
            self.log_change(request, rule, [{"changed": {"fields": ["enabled"]}}])
            changed += 1
        state = "enabled" if enabled else "disabled"
        self.message_user(
            request,
            f"{changed} rule{'s' if changed != 1 else ''} {state}; "
            f"{queryset.count() - changed} already {state}.",
            messages.SUCCESS,
        )


class ArmFormSet(forms.BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        if any(f.errors for f in self.forms):
            return  # each arm's own errors say what to fix first
        kept = [
            f.cleaned_data
            for f in self.forms
            if f.cleaned_data and not f.cleaned_data.get("DELETE", False)
        ]
        if len(kept) < 2:
            raise forms.ValidationError("An experiment needs at least two arms.")
        names = [str(arm.get("name", "")).strip().lower() for arm in kept]
        if len(set(names)) < len(names):
            raise forms.ValidationError(
                "Two arms have the same name: the report could not tell them apart."
            )
        total = sum(float(arm.get("share") or 0) for arm in kept)
        if abs(total - 100.0) > 1e-6:
            raise forms.ValidationError(f"The arms' shares add up to {total:g}, not 100.")
        # What the pipeline learns for everyone follows the active version:
        # an arm whose version says otherwise would be reported as testing it.
        active = tuning.active()
        changed = [
            f.cleaned_data
            for f in self.forms
            if f.cleaned_data and (f.has_changed() or f.instance.pk is None)
        ]
        for arm in changed:
            if not arm.get("tuning") or arm.get("DELETE"):
                continue
            differing = arm["tuning"].shared_differences(active)
            if differing:
                raise forms.ValidationError(
                    f"Arm “{arm.get('name')}” uses version {arm['tuning'].pk}, which differs "
                    f"from the active version"
                    f"{f' ({active.pk})' if active is not None else ''} in "
                    f"{', '.join(n.replace('_', ' ') for n in differing)}. The pipeline learns "
                    f"those for every arm with the active version’s values, so an experiment "
                    f"cannot compare them: arms may differ only in the strategies, exploration, "
                    f"recency decay and ranking. Compare the others by activating a version for a "
                    f"while and watching the dashboard."
                )


class ArmInline(admin.TabularInline):
    """The arms; fixed once the experiment started (the split and the counts
    per arm depend on them)."""

    model = ExperimentArm
    formset = ArmFormSet
    extra = 2
    min_num = 0

    def _started(self, obj: Any) -> bool:
        from django.utils import timezone

        return obj is not None and obj.pk is not None and obj.starts_at <= timezone.now()

    def get_extra(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> int:
        return 0 if self._started(obj) else self.extra

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._started(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._started(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._started(obj) and super().has_delete_permission(request, obj)


class ExperimentForm(forms.ModelForm):
    class Meta:
        model = Experiment
        fields = ["name", "hypothesis", "starts_at", "ends_at"]

    def clean(self) -> dict[str, Any]:
        from django.db.models import Q

        cleaned = super().clean()
        starts, ends = cleaned.get("starts_at"), cleaned.get("ends_at")
        if starts and ends and ends <= starts:
            self.add_error("ends_at", "An experiment must end after it starts.")
        elif starts:
            others = Experiment.objects.exclude(pk=self.instance.pk).filter(
                Q(ends_at__isnull=True) | Q(ends_at__gt=starts)
            )
            if ends:
                others = others.filter(starts_at__lt=ends)
            clash = others.first()
            if clash is not None:
                raise forms.ValidationError(
                    f"It overlaps “{clash}”: one experiment runs at a time (end that one first)."
                )
        return cleaned


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    """Experiments between tuning versions; the report compares the arms."""

    form = ExperimentForm
    inlines = [ArmInline]
    list_display = ("name", "starts_at", "ends_at", "running", "report_link")
    actions = ["stop"]

    def save_model(self, request: HttpRequest, obj: Experiment, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        from django.db import transaction

        transaction.on_commit(tuning.publish_experiment)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        super().delete_model(request, obj)
        from django.db import transaction

        transaction.on_commit(tuning.publish_experiment)

    @admin.display(boolean=True, description="running")
    def running(self, obj: Experiment) -> bool:
        from django.utils import timezone

        now = timezone.now()
        live = obj.starts_at <= now and (obj.ends_at is None or now < obj.ends_at)
        return live and obj.arms.exists()

    @admin.display(description="report")
    def report_link(self, obj: Experiment) -> str:
        from django.urls import reverse
        from django.utils.html import format_html

        return format_html(
            '<a href="{}">report</a>', reverse("admin:reco_plugin_experiment_report", args=[obj.pk])
        )

    @admin.action(description="Stop the selected experiments now", permissions=["change"])
    def stop(self, request: HttpRequest, queryset: Any) -> None:
        from django.db import transaction
        from django.utils import timezone

        now = timezone.now()
        stopped = []
        for experiment in queryset:
            if experiment.ends_at is None or experiment.ends_at > now:
                # one that had not started yet is over before it started
                experiment.starts_at = min(experiment.starts_at, now)
                experiment.ends_at = now
                experiment.save(update_fields=["starts_at", "ends_at"])
                self.log_change(
                    request, experiment, [{"changed": {"fields": ["starts_at", "ends_at"]}}]
                )
                stopped.append(f"“{experiment}”")
        transaction.on_commit(tuning.publish_experiment)
        self.message_user(
            request,
            f"Stopped {', '.join(stopped)}." if stopped else "They had all ended already.",
            messages.SUCCESS if stopped else messages.WARNING,
        )

    def get_urls(self) -> list[Any]:
        from django.urls import path

        report = self.admin_site.admin_view(self.report_view)
        return [
            path("<int:pk>/report/", report, name="reco_plugin_experiment_report"),
            *super().get_urls(),
        ]

    def report_view(self, request: HttpRequest, pk: int) -> Any:
        from django.core.exceptions import PermissionDenied
        from django.shortcuts import get_object_or_404
        from django.template.response import TemplateResponse

        from . import experiments
        from .redis_client import get_work_redis

        if not self.has_view_permission(request):
            raise PermissionDenied
        experiment = get_object_or_404(Experiment, pk=pk)
        error, result = None, None
        if experiment.arms.count() < 2:
            error = "This experiment has fewer than two arms."
        else:
            try:
                result = experiments.read_report(get_work_redis(), experiment.definition())
            except Exception as exc:  # Redis down: say so, do not fail the page
                error = f"Redis did not answer: {exc}"
        context = {
            **self.admin_site.each_context(request),
            "title": f"Report: {experiment}",
            "opts": self.model._meta,
            "experiment": experiment,
            "report": result,
            "error": error,
            "refresh_seconds": 30,
        }
        return TemplateResponse(request, "admin/reco_plugin/experiment_report.html", context)


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    """``/admin/reco_plugin/dashboard/``: charts of the pipeline and the
    recommendations' performance, refreshing themselves."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def get_urls(self) -> list[Any]:
        from django.urls import path

        # only the page and its data: not the change and history pages of the
        # tuning versions this proxy model stands on
        page = self.admin_site.admin_view(self.changelist_view)
        data = self.admin_site.admin_view(self.data_view)
        return [
            path("", page, name="reco_plugin_dashboard_changelist"),
            path("data/", data, name="reco_plugin_dashboard_data"),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        from django.template.response import TemplateResponse

        context = {
            **self.admin_site.each_context(request),
            "title": "Recommendations dashboard",
            "opts": self.model._meta,
            "refresh_seconds": 10,
        }
        return TemplateResponse(request, "admin/reco_plugin/dashboard.html", context)

    def data_view(self, request: HttpRequest) -> Any:
        from django.http import JsonResponse

        from . import dashboard

        try:
            return JsonResponse(dashboard.data())
        except Exception as exc:  # Redis down: the page says so and keeps trying
            return JsonResponse({"error": f"Redis did not answer: {exc}"}, status=503)
