"""Celery tasks: thin wrappers around plain functions, taking ids."""

from __future__ import annotations

from celery import shared_task

from . import catalog


@shared_task(name="reco_plugin.sync_catalog", ignore_result=True)
def sync_catalog() -> dict[str, int]:
    return catalog.sync_catalog()


@shared_task(
    name="reco_plugin.sync_products",
    ignore_result=True,
    autoretry_for=(ConnectionError,),
    retry_backoff=True,
    max_retries=5,
)
def sync_products(product_ids: list[str]) -> int:
    return catalog.sync_products(product_ids)
