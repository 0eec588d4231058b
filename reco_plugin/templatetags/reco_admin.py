"""Small filters for the admin's report pages."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def rate(value: Any) -> str:
    """A (rate, low, high) triple as ``12.3% (10.1–14.8%)``; a dash without data."""
    if not value:
        return "—"
    p, low, high = value
    return f"{p * 100:.2f}% ({low * 100:.2f}–{high * 100:.2f}%)"


@register.filter
def percent(value: Any) -> str:
    """A share as ``12.30%``; a dash without data."""
    return "—" if value is None else f"{value * 100:.2f}%"
