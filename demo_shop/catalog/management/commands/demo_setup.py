import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from demo_shop import movielens
from demo_shop.catalog.models import Product
from reco_plugin.catalog import sync_catalog

STAFF_USER = "staff"


class Command(BaseCommand):
    help = "Load the MovieLens-100k films as products, sync them to Redis, create the staff login."

    def add_arguments(self, parser):
        parser.add_argument("--no-sync", action="store_true", help="do not sync to Redis")

    def handle(self, *args, no_sync=False, **options):
        films = movielens.films()
        existing = set(Product.objects.values_list("pk", flat=True))
        new = [
            Product(
                id=f.id,
                name=f.title,
                year=f.year,
                category=f.category,
                genres=", ".join(f.genres),
                price=f.price,
            )
            for f in films
            if f.id not in existing
        ]
        Product.objects.bulk_create(new, batch_size=500)
        self.stdout.write(f"catalog: {len(new)} products added, {len(existing)} already there")
        if not no_sync:
            result = sync_catalog()
            self.stdout.write(f"catalog synced to Redis: {result['synced']} products")
        password = os.environ.get("RECO_DEMO_STAFF_PASSWORD", "reco-demo")
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=STAFF_USER, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password(password)
            user.save()
        self.stdout.write(f"staff login for /admin/: {STAFF_USER} / {password}")
