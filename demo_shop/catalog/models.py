from django.conf import settings
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


class Cart(models.Model):
    """A shopper's cart: its id is kept in the session; ``user`` once they log in."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE
    )
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Cart {self.pk}"


class CartLine(models.Model):
    """Saving and deleting lines emits add_to_cart / remove_from_cart
    (``RECO_PLUGIN["CART_MODEL"]``)."""

    cart = models.ForeignKey(Cart, related_name="lines", on_delete=models.CASCADE)
    product = models.ForeignKey(Product, on_delete=models.CASCADE)
    quantity = models.PositiveIntegerField(default=1)
    unit_price = models.DecimalField(max_digits=6, decimal_places=2)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cart", "product"], name="one_line_per_product")
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id}"

    @property
    def total(self):
        return self.unit_price * self.quantity


class Order(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    placed = models.DateTimeField(auto_now_add=True)
    total = models.DecimalField(max_digits=9, decimal_places=2)

    def __str__(self) -> str:
        return f"Order {self.pk}"


class OrderLine(models.Model):
    """Each line saved emits one purchase event (``RECO_PLUGIN["ORDER_LINE_MODEL"]``)."""

    order = models.ForeignKey(Order, related_name="lines", on_delete=models.CASCADE)
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=6, decimal_places=2)

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id}"
