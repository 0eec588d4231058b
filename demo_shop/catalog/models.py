from django.db import models
from django.urls import reverse


class Product(models.Model):
    """A film of MovieLens-100k, sold by the demo shop (id = MovieLens item id)."""

    id = models.PositiveIntegerField(primary_key=True)
    name = models.CharField(max_length=255)
    year = models.PositiveSmallIntegerField(null=True, blank=True)
    category = models.CharField(max_length=40, db_index=True, help_text="first genre")
    genres = models.CharField(max_length=255, blank=True)
    price = models.DecimalField(max_digits=6, decimal_places=2)
    in_stock = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("product_detail", args=[self.pk])

    @property
    def image_url(self) -> str:
        return ""

    @property
    def display_price(self) -> str:
        return f"${self.price}"
